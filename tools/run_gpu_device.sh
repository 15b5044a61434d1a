#!/usr/bin/env bash
# The one script the GPU device machine runs: install pycuda (carried wheels), GPU tests, then the benchmark.
# Logs go under $OUT (the device tool's output folder; /tmp/bitnet-gpu-out elsewhere).
#
# Carried (ignored) paths it reads: .whl/ (pycuda-*.whl built for cp312 against a stub libcuda, pytools,
# platformdirs, mako, siphash24; optionally pycuda-*.tar.gz as a fallback sdist, left out by default for the
# 64 MiB transfer limit) and .gpucarry/ (the Cython CPU
# extension built for the device's Python, which `import bitnet_kernels` loads).
#   usage: bash tools/run_gpu_device.sh [--no-bench] [bench_gpu.py args...]
set -u -o pipefail
OUT=${OUT:-/tmp/bitnet-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export BITNET_GPU_CACHE=/tmp/bitnet-cuda-cache
ROOT=$(pwd)
PY=python3
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY --version
} 2>&1 | tee "$OUT/device.txt"

$PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  2>&1 | tail -3
export PYTHONPATH=/tmp/site:$ROOT/packages/bitnet-quantization/src:$ROOT/packages/bitnet-models/src:$ROOT/packages/bitnet-inference/src:$ROOT/packages/bitnet-kernels/src:$ROOT/packages/bitnet-tokenizers/src
PYV=$($PY -c 'import sys; print(f"{sys.version_info[0]}{sys.version_info[1]}")')
cp .gpucarry/_cpu.cpython-${PYV}-x86_64-linux-gnu.so packages/bitnet-kernels/src/bitnet_kernels/ 2>/dev/null \
  || (cd packages/bitnet-kernels && $PY hatch_build.py > "$OUT/cython_build.log" 2>&1)

if ! $PY -c 'import ctypes; ctypes.CDLL("libcuda.so.1", mode=ctypes.RTLD_GLOBAL); import pycuda.driver' 2>>"$OUT/pycuda_import.log"; then
  echo "carried pycuda wheel did not import; building the sdist" | tee -a "$OUT/pycuda_import.log"
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/pycuda-*.tar.gz \
    >> "$OUT/pycuda_import.log" 2>&1
fi
$PY -c 'from bitnet_kernels.gpu import gpu_status; print("gpu_status:", gpu_status())' 2>&1 | tee -a "$OUT/device.txt"

# GPU_TESTS=0: no tests; GPU_TESTS=kernels: the kernel tests only
if [ "${GPU_TESTS:-1}" != "0" ]; then
  TESTS="packages/bitnet-kernels/tests/test_gpu_kernels.py"
  [ "${GPU_TESTS:-1}" = "kernels" ] || TESTS="$TESTS packages/bitnet-kernels/tests/test_gpu_model.py"
  timeout ${GPU_TEST_TIMEOUT:-300} $PY -m pytest $TESTS \
    -q -rs -s -p no:cacheprovider -o addopts="" 2>&1 | tee "$OUT/tests.log" | grep -Ev "^\.+ *\[" | tail -40
fi

# GPU_PROFILE=1: the in-graph cost of each layer kernel (tools/gpu_profile_step.py ablate), one layer's stage
# timestamps (timeline), then Nsight Compute on one layer's five kernels inside a graph replay (ncu.txt; GPU_NCU=0:
# not); GPU_ABLATE_ARGS / GPU_TIMELINE_ARGS: the tool's arguments (default 288: every variant of its CONFIGS)
if [ "${GPU_PROFILE:-0}" = "1" ]; then
  timeout ${GPU_PROFILE_TIMEOUT:-150} $PY tools/gpu_profile_step.py ablate ${GPU_ABLATE_ARGS:-288} 2>&1 | tee "$OUT/ablate.txt"
  timeout ${GPU_PROFILE_TIMEOUT:-150} $PY tools/gpu_profile_step.py timeline ${GPU_TIMELINE_ARGS:-288} 2>&1 | tee "$OUT/timeline.txt"
fi
if [ "${GPU_PROFILE:-0}" = "1" ] && [ "${GPU_NCU:-1}" != "0" ]; then
  NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  # launches before layer 15 of the first replay: 30 prefill attentions, one eager step (150), 15 layers
  timeout ${GPU_PROFILE_TIMEOUT:-150} $NCU --clock-control none \
    -k 'regex:^(tdech?_|attn_split|attention)' --launch-skip 255 --launch-count 5 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    --section MemoryWorkloadAnalysis $PY tools/gpu_profile_step.py 2 fused > "$OUT/ncu.txt" 2>&1
  grep -E "^  [a-z_]+ |Duration|Warp Cycles Per Issued|Achieved Occupancy" "$OUT/ncu.txt" | head -40
fi

if [ "${1:-}" != "--no-bench" ]; then
  timeout ${GPU_BENCH_TIMEOUT:-420} $PY tools/bench_gpu.py --json "$OUT/bench.json" "$@" 2>&1 | tee "$OUT/bench.log" | tail -25
fi
