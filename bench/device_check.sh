#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (no network; torch, numba, pyarrow, pytest
# preinstalled). Today the project has only the CPU (numba) path, so it runs the whole test
# suite, slow stress tests included, and the CPU benchmark on that machine's cores, and
# records the card. The CUDA backend's GPU suite and kernel benchmarks join it when they exist.
# Results: $OUT (the device tool's folder) or bench/results/ when OUT is unset.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || echo "no nvidia-smi"
  python3 -c 'import torch, numba, numpy, pyarrow; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-", "| numba", numba.__version__,
  "threads", numba.get_num_threads(), "| numpy", numpy.__version__, "| pyarrow", pyarrow.__version__)'
} 2>&1 | tee "$out/device_info.txt"
status=0
timeout 240 python3 -m pytest -q -m "slow or not slow" -p no:cacheprovider 2>&1 | tee "$out/device_tests.log" || status=1
timeout 240 python3 bench/bench_cpu.py --repeats 7 --out "$out" 2>&1 | grep -v '^reload' | tee "$out/device_bench.log" \
  || status=1
echo "device_check: $([ $status = 0 ] && echo passed || echo FAILED)"
exit $status
