#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (no network; torch cu130, cupy-cuda13x,
# cuda-bindings, numba, pyarrow, pytest preinstalled). In under 5 minutes it
#   1. records the card, driver and library versions;
#   2. runs the GPU tests first (the CUDA backend against the CPU backend bit for bit, CUDA
#      IPC results of the node server), then the rest of the suite, slow tests included;
#   3. runs the kernel benchmark (bench/bench_cuda.py) and prints its summary.
# Results: $OUT (the device tool's folder) or bench/results/ when OUT is unset.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GPU_NEGSAMPLE_CACHE="${TMPDIR:-/tmp}/gpu_negsample_cache"
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  python3 -c 'import torch, numba, numpy, pyarrow; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| numba", numba.__version__,
  "threads", numba.get_num_threads(), "| numpy", numpy.__version__, "| pyarrow", pyarrow.__version__)'
  python3 -c 'import cupy; print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())' 2>&1 | tail -1
} 2>&1 | tee "$out/device_info.txt"
status=0
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider -rs 2>&1 | tee "$out/device_gpu_tests.log" || status=1
grep -qi "skipped.*no CUDA device" "$out/device_gpu_tests.log" && { echo "GPU tests were skipped: no usable GPU"; status=1; }
timeout 150 python3 -m pytest -q -m "not gpu" -p no:cacheprovider -rs 2>&1 | tee "$out/device_tests.log" || status=1
timeout 90 python3 bench/bench_cuda.py --repeats 20 --out "$out" 2>&1 | grep -v '^reload' | tee "$out/device_bench.log" \
  || status=1
echo "device_check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
