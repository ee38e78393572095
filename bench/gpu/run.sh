#!/usr/bin/env bash
# On a machine with an NVIDIA GPU (H100/H200 class): builds gradcomm with CUDA, runs the
# GPU tests and the CUDA kernel benchmarks, and writes the results into OUTDIR.
#
#   bench/gpu/run.sh OUTDIR
#
# Made to fit a short window on a lent GPU machine (well under 10 minutes): only the
# CUDA-related targets are built. Writes OUTDIR/gpu_bench.json (kernel timings against a
# device copy), OUTDIR/gpu_tests.log (the GPU tests; GTest is needed for them and is
# skipped with a note where absent) and OUTDIR/nvidia-smi.txt.
set -uo pipefail
out=${1:?usage: bench/gpu/run.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/../.."
build=${GRADCOMM_GPU_BUILD:-build-gpu}
jobs=$(nproc)

nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "run.sh: nvidia-smi not available" | tee -a "$out/nvidia-smi.txt"

# GoogleTest: installed, or sources to build with the tests. A bare device machine has no
# network: copy Debian's /usr/src/googletest into build-gtest-src (ignored by git) and
# carry that path along, or point GRADCOMM_GTEST_SOURCE at a copy.
have_gtest=OFF gtest_source=${GRADCOMM_GTEST_SOURCE:-}
[ -z "$gtest_source" ] && [ -f build-gtest-src/CMakeLists.txt ] && gtest_source=$PWD/build-gtest-src
if [ -f /usr/include/gtest/gtest.h ] || [ -n "${GTest_DIR:-}" ] || [ -n "$gtest_source" ]; then have_gtest=ON; fi
# Google Benchmark is not needed (no micro-benchmark is built here) and may be missing.
# GRADCOMM_GPU_CMAKE_ARGS: extra configure arguments (the CPU test of this configure
# passes -DCMAKE_DISABLE_FIND_PACKAGE_benchmark=ON and stops after it with
# GRADCOMM_GPU_CONFIGURE_ONLY=1).
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGRADCOMM_WITH_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCHS:-90}" -DGRADCOMM_BUILD_TESTS=$have_gtest \
  -DGRADCOMM_REQUIRE_BENCHMARK=OFF -DGRADCOMM_GTEST_SOURCE="$gtest_source" \
  -DGRADCOMM_BUILD_EXAMPLES=OFF -DGRADCOMM_WITH_PYTHON=OFF ${GRADCOMM_GPU_CMAKE_ARGS:-} > "$out/configure.log" 2>&1 \
  || { echo "run.sh: configure failed (see $out/configure.log)"; tail -20 "$out/configure.log"; exit 1; }
if [ -n "${GRADCOMM_GPU_CONFIGURE_ONLY:-}" ]; then echo "run.sh: configured $build"; exit 0; fi

targets=(gradcomm-gpubench)
[ "$have_gtest" = ON ] && targets+=(gradcomm-gpu-tests)
cmake --build "$build" -j "$jobs" --target "${targets[@]}" > "$out/build.log" 2>&1 \
  || { echo "run.sh: build failed (see $out/build.log)"; tail -30 "$out/build.log"; exit 1; }

status=0
if [ "$have_gtest" = ON ]; then
  "$build/tests/gradcomm-gpu-tests" --gtest_output=json:"$out/gpu_tests.json" 2>&1 | tee "$out/gpu_tests.log"
  rc=${PIPESTATUS[0]}
  if [ "$rc" = 77 ]; then echo "run.sh: no CUDA device: GPU tests skipped"; elif [ "$rc" != 0 ]; then status=1; fi
else
  echo "run.sh: GoogleTest not found: GPU tests not built (install libgtest-dev, set GTest_DIR, or carry its sources as build-gtest-src)" | tee "$out/gpu_tests.log"
fi

"$build/bench/gradcomm-gpubench" --json "$out/gpu_bench.json" --iters "${GPU_BENCH_ITERS:-20}" 2>&1 | tee "$out/gpu_bench.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] || status=1
echo "run.sh: results in $out (exit $status)"
exit $status
