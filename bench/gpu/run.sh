#!/usr/bin/env bash
# Everything gradcomm checks on a GPU, in one command, for a bare H100/H200 machine (CUDA 13
# with nvcc and compute-sanitizer, PyTorch 2.x with CUDA, NCCL as the nvidia-nccl wheel,
# CMake, ninja; no MPI, no network), in under 8 minutes:
#
#   bench/gpu/run.sh OUTDIR      # the checks; results in OUTDIR
#   bench/gpu/run.sh --prepare   # here, before lending: makes the carried copies below
#
# Stages (each bounded by a timeout; OUTDIR/<stage>.log holds its output):
#   configure, build   CUDA + NCCL + the Python module, only the targets used below
#   device             is a CUDA device usable? If not: exit 3, "no CUDA device", all built
#   gpu_tests          tests/gpu (gradcomm-gpu-tests): compressors on CUDA bitwise against
#                      the CPU, ThreadCommunicator on CUDA, NCCL streams on one rank, the
#                      Exchanger for every compressor (1 NCCL rank; 2 and 4 thread ranks)
#   memcheck           compute-sanitizer --tool memcheck on $MEMCHECK_FILTER (below)
#   racecheck          compute-sanitizer --tool racecheck on $RACECHECK_FILTER
#   python_hooks       tests/python/test_hooks_cuda.py: every DDP hook on CUDA buckets
#                      (gloo, 2 ranks sharing the GPU) bitwise against CPU tensors, and
#                      the DGC hook training the digits MLP on CUDA to the CPU's accuracy
#   gpu_bench          gradcomm-gpubench: DGC encode (n = 25,557,032, density 0.001) and
#                      1-bit compress, each against a device copy of the bytes it must
#                      move, measured in the same run
# Writes OUTDIR/summary.txt (one screen), OUTDIR/results.json (every stage's status and
# seconds, the bench rows), gpu_tests.json, gpu_bench.json, nvidia-smi.txt.
# Exit status: 0 every stage passed; 1 some stage failed (named in summary.txt); 3 no
# CUDA device (everything was built, nothing ran).
#
# Carried (ignored by git; `--prepare` makes them here; carry these paths, about 13 MiB in all):
#   build-gtest-src/   GoogleTest sources (Debian's /usr/src/googletest), built with the tests
#   build-pybind11/    the pybind11 package (headers and CMake config) of .venv, which
#                      bindings/python/install.sh installs
#   build-digits/      digits.csv.gz from scikit-learn (57 KB), where the image has no sklearn
#   build-pylibs/      pytest and its dependencies (pure Python), where the image has none
# Environment: GRADCOMM_GPU_BUILD (build dir, default build-gpu), CUDA_ARCHS (default 90),
# GRADCOMM_GPU_BUDGET (seconds for the whole run, default 570: each stage's timeout is cut
# to what is left, and a stage with no time left fails as no-time),
# GRADCOMM_GPU_REUSE_BUILD=1 (use an already configured build dir as it is: CTest's
# no-device check on the default build), GRADCOMM_GPU_CONFIGURE_ONLY=1 (stop after the
# configure), GRADCOMM_GPU_PROBE_ONLY=1 (stop after the device probe: 77 with a device),
# GRADCOMM_GPU_CMAKE_ARGS (extra configure arguments).
set -uo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
python=${PYTHON:-python3}

if [ "${1:-}" = --prepare ]; then
  set -e
  rm -rf build-gtest-src build-pybind11 build-digits build-pylibs
  cp -r /usr/src/googletest build-gtest-src
  pybind11_pkg=$(.venv/bin/python -c "import os, pybind11; print(os.path.dirname(pybind11.__file__))")
  cp -r "$pybind11_pkg" build-pybind11
  mkdir -p build-digits
  cp "$(/usr/bin/python3 -c "import os, sklearn.datasets as d; print(os.path.join(os.path.dirname(d.__file__), 'data', 'digits.csv.gz'))")" build-digits/
  /usr/bin/python3 -m pip install --quiet --no-compile --target build-pylibs pytest
  du -sh build-gtest-src build-pybind11 build-digits build-pylibs
  echo "run.sh: carry build-gtest-src build-pybind11 build-digits build-pylibs"
  exit 0
fi

out=${1:?usage: bench/gpu/run.sh OUTDIR | --prepare}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${GRADCOMM_GPU_BUILD:-build-gpu}
jobs=$(nproc)
started=$SECONDS
budget=${GRADCOMM_GPU_BUDGET:-570}  # seconds for the whole run: a lent machine's command limit is 600
declare -a names=() states=() seconds=()
status=0

record() {  # record STAGE STATE SECONDS
  names+=("$1"); states+=("$2"); seconds+=("$3")
  printf 'run.sh: %-13s %-8s %4d s\n' "$1" "$2" "$3"
}
stage() {  # stage NAME TIMEOUT COMMAND...: runs it into OUTDIR/NAME.log, records the outcome
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS left=$((budget - (SECONDS - started)))
  # Every stage within the whole run's budget, so a slow one leaves results, not a kill.
  if [ $left -lt 15 ]; then echo "run.sh: out of time (budget ${budget} s)" > "$out/$name.log"; record "$name" no-time 0; status=1; return 1; fi
  [ $limit -gt $left ] && limit=$left
  timeout --kill-after=10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  if [ $rc = 0 ]; then record "$name" passed $((SECONDS - t0));
  elif [ $rc = 124 ] || [ $rc = 137 ]; then record "$name" timeout $((SECONDS - t0)); status=1
  else record "$name" "failed($rc)" $((SECONDS - t0)); status=1; fi
  return $rc
}

write_summary() {  # the one-screen summary and results.json, from what ran
  local exit_status=$1
  "$python" - "$out" "$exit_status" "$((SECONDS - started))" <<'PY' || true
import json, os, sys
out, exit_status, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
env = os.environ
stages = [dict(name=n, state=s, seconds=int(t)) for n, s, t in
          zip(env["RUN_NAMES"].split(), env["RUN_STATES"].split(), env["RUN_SECONDS"].split())]
lines = [f"gradcomm GPU run: exit {exit_status} after {total} s"]
smi = os.path.join(out, "nvidia-smi.txt")
if os.path.exists(smi):
    gpu = [l for l in open(smi) if l.startswith("GPU ")]
    lines.append("device: " + (gpu[0].strip() if gpu else "(nvidia-smi -L found none)"))
lines += [f"  {s['name']:13s} {s['state']:10s} {s['seconds']:4d} s" for s in stages]
tests = os.path.join(out, "gpu_tests.json")
if os.path.exists(tests):
    t = json.load(open(tests))
    suites = {}
    for suite in t.get("testsuites", []):
        key = suite["name"].split("/")[-1]
        ok, bad = suites.get(key, (0, 0))
        for case in suite.get("testsuite", []):
            failed = bool(case.get("failures"))
            ok, bad = ok + (not failed), bad + failed
        suites[key] = (ok, bad)
    lines.append("gpu tests: " + ", ".join(f"{k} {ok}/{ok + bad}" for k, (ok, bad) in sorted(suites.items())))
bench = os.path.join(out, "gpu_bench.json")
rows = []
if os.path.exists(bench):
    b = json.load(open(bench))
    rows = b["rows"]
    for r in rows:
        target = ""
        if r["name"].startswith("dgc_encode") or r["name"] == "onebit_worker_compress":
            target = "  (target <= 2x: " + ("met" if r["vs_floor"] <= 2.0 else "MISSED") + ")"
        lines.append(f"  {r['name']:24s} n={r['elements']:>10} {r['median_ms']:8.3f} ms "
                     f"{r['vs_floor']:6.2f}x the copy floor{target}")
hooks = os.path.join(out, "python_hooks.log")
if os.path.exists(hooks):
    lines += ["  " + l.strip() for l in open(hooks) if l.startswith("digits MLP") or " passed" in l or " failed" in l][-3:]
text = "\n".join(lines) + "\n"
open(os.path.join(out, "summary.txt"), "w").write(text)
json.dump({"exit": exit_status, "seconds": total, "stages": stages, "bench": rows},
          open(os.path.join(out, "results.json"), "w"), indent=1)
print(text, end="")
PY
}
finish() {
  export RUN_NAMES="${names[*]:-}" RUN_STATES="${states[*]:-}" RUN_SECONDS="${seconds[*]:-}"
  write_summary "$1"
  echo "run.sh: results in $out (exit $1)"
  exit "$1"
}

{ nvidia-smi -L; nvidia-smi; } > "$out/nvidia-smi.txt" 2>&1 || echo "run.sh: nvidia-smi not available" >> "$out/nvidia-smi.txt"

# ---- where the parts come from -----------------------------------------------------------
gtest_source=${GRADCOMM_GTEST_SOURCE:-}
[ -z "$gtest_source" ] && [ -f build-gtest-src/CMakeLists.txt ] && gtest_source=$repo/build-gtest-src
have_gtest=OFF
if [ -f /usr/include/gtest/gtest.h ] || [ -n "${GTest_DIR:-}" ] || [ -n "$gtest_source" ]; then have_gtest=ON; fi
# NCCL: the CUDA toolkit's, else the nvidia-nccl wheel's (its library is libnccl.so.2 only).
nccl_args=()
if [ ! -f /usr/local/cuda/include/nccl.h ] && [ ! -f /usr/include/nccl.h ]; then
  nccl_root=$("$python" -c "import nvidia.nccl as m; print(list(m.__path__)[0])" 2>/dev/null || true)
  if [ -n "$nccl_root" ] && [ -f "$nccl_root/include/nccl.h" ]; then
    nccl_lib=$(ls "$nccl_root"/lib/libnccl.so* 2>/dev/null | head -1)
    nccl_args=(-DNCCL_INCLUDE_DIR="$nccl_root/include" -DNCCL_LIBRARY="$nccl_lib")
  fi
fi
# pybind11: the carried copy, else one the Python imports.
pybind11_dir=""
[ -d build-pybind11/share/cmake/pybind11 ] && pybind11_dir=$repo/build-pybind11/share/cmake/pybind11
[ -z "$pybind11_dir" ] && pybind11_dir=$("$python" -c "import pybind11; print(pybind11.get_cmake_dir())" 2>/dev/null || true)
python_args=(-DGRADCOMM_WITH_PYTHON=OFF)
if [ -n "$pybind11_dir" ]; then
  python_args=(-DGRADCOMM_WITH_PYTHON=ON -DGRADCOMM_BUILD_PYTHON_MODULE=ON -Dpybind11_DIR="$pybind11_dir"
               -DPython3_EXECUTABLE="$(command -v "$python")")
fi

# ---- configure and build -------------------------------------------------------------------
if [ "${GRADCOMM_GPU_REUSE_BUILD:-}" != 1 ]; then
  # Google Benchmark is not needed here and may be missing; MPI is absent on the device.
  stage configure 240 cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCOMM_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DGRADCOMM_BUILD_TESTS=$have_gtest \
    -DGRADCOMM_REQUIRE_BENCHMARK=OFF -DGRADCOMM_GTEST_SOURCE="$gtest_source" \
    -DGRADCOMM_BUILD_EXAMPLES=OFF "${nccl_args[@]}" "${python_args[@]}" ${GRADCOMM_GPU_CMAKE_ARGS:-} \
    || { tail -20 "$out/configure.log"; finish 1; }
  if [ -n "${GRADCOMM_GPU_CONFIGURE_ONLY:-}" ]; then echo "run.sh: configured $build"; exit 0; fi
fi
targets=(gradcomm-gpubench)
[ "$have_gtest" = ON ] && targets+=(gradcomm-gpu-tests)
ninja -C "$build" -t targets all 2>/dev/null | grep -q '^_gradcomm:' && targets+=(_gradcomm)
stage build 420 cmake --build "$build" -j "$jobs" --target "${targets[@]}" \
  || { tail -30 "$out/build.log"; finish 1; }
grep -q "NCCL=ON" "$build/CMakeCache.txt" 2>/dev/null || grep -q "GRADCOMM_WITH_NCCL:BOOL=ON" "$build/CMakeCache.txt" \
  || echo "run.sh: built without NCCL (no nccl.h in the toolkit or the nvidia-nccl wheel): the NCCL tests are skipped"

# ---- a device? -----------------------------------------------------------------------------
if [ "$have_gtest" = ON ]; then
  "$build/tests/gradcomm-gpu-tests" --gtest_filter=-* > "$out/device.log" 2>&1
  device_rc=$?
else
  "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 77)" > "$out/device.log" 2>&1
  device_rc=$?
fi
if [ "$device_rc" = 77 ]; then
  cat "$out/device.log"
  echo "run.sh: no CUDA device: everything is built (${targets[*]}), nothing ran"
  record device "none" 0
  finish 3
fi

if [ -n "${GRADCOMM_GPU_PROBE_ONLY:-}" ]; then echo "run.sh: a CUDA device is usable (probe only)"; exit 77; fi

# ---- the checks ----------------------------------------------------------------------------
if [ "$have_gtest" = ON ]; then
  stage gpu_tests 240 "$build/tests/gradcomm-gpu-tests" --gtest_output=json:"$out/gpu_tests.json"
  # Bounded subsets: one case of each kernel family (NCCL's own kernels left out).
  memcheck_filter=${MEMCHECK_FILTER:-'DenseOnCuda.*:QuantizeCuda.*:Selections/DgcOnCuda.*/0:DgcOnCudaSearch.*:Ranks/OneBitCuda.*/1:LgrecoOnCuda.*'}
  racecheck_filter=${RACECHECK_FILTER:-'QuantizeCuda.*:DgcOnCudaSearch.*:Ranks/OneBitCuda.WorkerCompressMatchesCpu/1'}
  sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  if [ -x "$sanitizer" ]; then
    stage memcheck 150 "$sanitizer" --tool memcheck --error-exitcode 1 --leak-check no \
      "$build/tests/gradcomm-gpu-tests" --gtest_filter="$memcheck_filter"
    stage racecheck 150 "$sanitizer" --tool racecheck --error-exitcode 1 \
      "$build/tests/gradcomm-gpu-tests" --gtest_filter="$racecheck_filter"
  else
    echo "run.sh: compute-sanitizer not found" > "$out/memcheck.log"
    record memcheck "missing" 0; status=1
  fi
else
  echo "run.sh: GoogleTest not found (carry build-gtest-src): GPU tests not built" > "$out/gpu_tests.log"
  record gpu_tests "missing" 0; status=1
fi

if [[ " ${targets[*]} " == *" _gradcomm "* ]]; then
  pypath="$repo/$build/bindings/python"
  [[ "$build" = /* ]] && pypath="$build/bindings/python"
  "$python" -c "import pytest" 2>/dev/null || pypath="$pypath:$repo/build-pylibs"
  digits_csv=""
  [ -f build-digits/digits.csv.gz ] && digits_csv=$repo/build-digits/digits.csv.gz
  stage python_hooks 300 env PYTHONPATH="$pypath" GRADCOMM_DIGITS_CSV="$digits_csv" \
    "$python" -m pytest -q -s -p no:cacheprovider tests/python/test_hooks_cuda.py
else
  echo "run.sh: the Python module was not built (no pybind11: carry build-pybind11)" > "$out/python_hooks.log"
  record python_hooks "missing" 0; status=1
fi

stage gpu_bench 180 "$build/bench/gradcomm-gpubench" --json "$out/gpu_bench.json" --iters "${GPU_BENCH_ITERS:-20}"
finish $status
