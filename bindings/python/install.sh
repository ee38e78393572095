#!/usr/bin/env bash
# Creates the repository's .venv (from the system Python, with --system-site-packages so
# the distribution's torch, numpy, scikit-learn and pytest stay visible) and installs the
# gradcomm package into it. Safe to rerun: the venv is reused and the CMake build in
# build-python/ is incremental.
#
#   bindings/python/install.sh            # uses /usr/bin/python3
#   PYTHON=/path/to/python3 bindings/python/install.sh
#
# Needs network access to PyPI the first time (scikit-build-core; pybind11 if the system
# has none). Extra arguments go to `pip install` (e.g. --config-settings=cmake.define.GRADCOMM_WITH_CUDA=ON).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-/usr/bin/python3}"
venv="${repo}/.venv"

if [[ ! -x "${venv}/bin/python" ]]; then
  "${python}" -m venv --system-site-packages "${venv}"
fi
# Build dependencies go into the venv itself and the build runs without isolation: the
# persistent build directory then keeps valid paths to them between installs.
"${venv}/bin/python" -m pip install --quiet "scikit-build-core>=0.8" "pybind11>=2.10"
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "${venv}/bin/python" -m pip install --quiet --no-build-isolation "$@" "${repo}/bindings/python"
"${venv}/bin/python" -c "import gradcomm; print('gradcomm', gradcomm.__version__, 'installed in ${venv}')"
