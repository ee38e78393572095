#!/usr/bin/env bash
# Makes .venv-torch2: a venv of /usr/bin/python3 WITHOUT the system's packages, with the
# newest torch 2.x and numpy from PyPI, the gradcomm wheel that install.sh built
# (build-python/dist/), and then pytest and scikit-learn for tests/python. It proves
# that the wheel installs into a clean environment next to a current torch, and that
# what imports there is that wheel, not the source tree. Safe to rerun: the venv is
# reused, and pip keeps a torch 2.x that is already there (the download, about 3 GB with
# the CUDA libraries PyPI's default wheel pulls in, happens once).
#
#   bindings/python/install.sh && bindings/python/install-torch2.sh
#   GRADCOMM_TORCH2='torch==2.4.1' bindings/python/install-torch2.sh   # another 2.x
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-/usr/bin/python3}"
venv="${repo}/.venv-torch2"
torch_spec="${GRADCOMM_TORCH2:-torch>=2,<3}"
wheels=("${repo}"/build-python/dist/gradcomm-*.whl)
if [[ ! -f "${wheels[0]}" ]]; then
  echo "install-torch2.sh: no gradcomm wheel in build-python/dist/: run bindings/python/install.sh first" >&2
  exit 1
fi
wheel="${wheels[0]}"

if [[ ! -x "${venv}/bin/python" ]]; then
  "${python}" -m venv "${venv}"
fi
pip=("${venv}/bin/python" -m pip install --quiet)
"${pip[@]}" "${torch_spec}" numpy
# Uninstall first: the rebuilt wheel has the same version, which pip would take as
# installed already. Its dependencies resolve normally (numpy is there).
"${venv}/bin/python" -m pip uninstall --quiet --yes gradcomm 2>/dev/null || true
"${pip[@]}" "${wheel}"
# -I: no current directory, PYTHONPATH or user site on sys.path, so only the venv's
# site-packages can supply gradcomm.
(cd / && "${venv}/bin/python" -I "${repo}/tests/python/check_installed_wheel.py" "${wheel}")
"${pip[@]}" pytest scikit-learn
