#!/usr/bin/env bash
# Builds the gradcomm wheel (build-python/dist/) and installs it into the repository's
# .venv (made from the system Python with --system-site-packages, so the distribution's
# torch, numpy, scikit-learn and pytest stay visible). Safe to rerun: the venv is reused
# and the CMake build in build-python/ is incremental. bindings/python/install-torch2.sh
# installs the same wheel next to torch 2.x from PyPI.
#
#   bindings/python/install.sh            # uses /usr/bin/python3
#   PYTHON=/path/to/python3 bindings/python/install.sh
#
# Needs network access to PyPI the first time (scikit-build-core, pybind11). Extra
# arguments go to `pip wheel` (e.g. --config-settings=cmake.define.GRADCOMM_WITH_MPI=ON).
# The CUDA kernels are built when nvcc is found (on PATH or in /usr/local/cuda/bin), so the
# hooks take CUDA buckets; GRADCOMM_PYTHON_CUDA=OFF builds the host-only package, =ON
# insists (and fails without nvcc). The wheel then needs libcudart at run time, as torch
# with CUDA does.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-/usr/bin/python3}"
venv="${repo}/.venv"
build="${repo}/build-python"
dist="${build}/dist"

if [[ ! -x "${venv}/bin/python" ]]; then
  "${python}" -m venv --system-site-packages "${venv}"
fi
# Build dependencies go into the venv itself and the build runs without isolation: the
# persistent build directory then keeps valid paths to them between builds. pybind11 2.12
# is the first whose numpy support works with numpy 2 (a module built with the system's
# 2.10 hands torch 2.x venvs, which have numpy 2, mis-strided arrays), and the venv's
# copy is named to CMake explicitly because a build directory made earlier has the
# system's cached.
"${venv}/bin/python" -m pip install --quiet "scikit-build-core>=0.8" "pybind11>=2.12"
pybind11_dir=$("${venv}/bin/python" -c "import pybind11; print(pybind11.get_cmake_dir())")
nvcc="$(command -v nvcc || true)"
[[ -z "${nvcc}" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
cuda="${GRADCOMM_PYTHON_CUDA:-$([[ -n "${nvcc}" ]] && echo ON || echo OFF)}"
cuda_settings=(--config-settings=cmake.define.GRADCOMM_WITH_CUDA="${cuda}")
if [[ "${cuda}" == ON ]]; then
  [[ -n "${nvcc}" ]] || { echo "install.sh: GRADCOMM_PYTHON_CUDA=ON but no nvcc on PATH or in /usr/local/cuda/bin" >&2; exit 1; }
  cuda_settings+=(--config-settings=cmake.define.CMAKE_CUDA_COMPILER="${nvcc}")
fi
echo "install.sh: CUDA kernels ${cuda}${nvcc:+ (nvcc: ${nvcc})}"
rm -f "${dist}"/gradcomm-*.whl
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "${venv}/bin/python" -m pip wheel --quiet --no-deps --no-build-isolation \
  --config-settings=build-dir="${build}" \
  --config-settings=cmake.define.pybind11_DIR="${pybind11_dir}" "${cuda_settings[@]}" \
  -w "${dist}" "$@" "${repo}/bindings/python"
wheel=("${dist}"/gradcomm-*.whl)
# Same version, new contents: pip would call the installed copy up to date.
"${venv}/bin/python" -m pip install --quiet --no-deps --force-reinstall "${wheel[0]}"
"${venv}/bin/python" -c "import gradcomm; print('gradcomm', gradcomm.__version__, 'installed in ${venv} from ${wheel[0]}')"
