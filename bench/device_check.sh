#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (one H100/H200, CUDA 13, torch cu130,
# cupy-cuda13x, numba, pyarrow, pytest; no network, maybe no pyzmq). In about 5 minutes:
#   1. records the card, driver, topology, MIG and compute mode, visible devices, versions;
#   2. checks batch-wide sample_ids on the GPU against the emulation (the same .cu through
#      g++), id for id, before anything else needs the CPU path compiled
#      (bench/cuda_vs_emulation.py);
#   3. fills the numba compile cache, one process per pipeline entry point (python -m
#      gpu_negsample.precompile), so no later step spends its time limit compiling;
#   4. runs the GPU tests (the CUDA path against the CPU path bit for bit, a prefetch thread,
#      per-rank streams, the caller's stream, CUDA IPC results with two processes on one GPU
#      and hot reload on a GPU server; the server tests skip themselves without pyzmq);
#   5. runs the parity tests again under compute-sanitizer memcheck, when it is there;
#   6. runs bench/bench_cuda.py (every figure written to JSON as soon as it is measured);
#   7. runs the node server on the GPU with results="cuda": 1 and 4 client processes, fused
#      4096x10 p50/p99 (bench/bench_server.py --node; it records "skipped" without pyzmq);
#   8. profiles the host side of sample_ids, batch-wide sample_ids and the fused sample() at
#      4096x10, 65536x10 and 1Mx10 (bench/profile_request.py: cProfile, own time per call).
# Every step has its own time limit (SIGINT first, so pytest still writes its report), and a
# failing step does not stop the next. Results: $OUT when set, else bench/results/<card>/;
# summary.txt lists each step's exit status (124: it ran out of time).
set -uo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python3}"  # the interpreter with torch, cupy and the package's dependencies
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export GPU_NEGSAMPLE_CACHE="${TMPDIR:-/tmp}/gpu_negsample_cache"
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9.\n-' '_')
out="${OUT:-bench/results/${card:-no-gpu}}"
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
GPU_TESTS=(tests/test_cuda_parity.py tests/test_gpu_streams.py tests/test_server.py)

# step NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, note the status.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name (at most ${limit} s)"
  timeout -s INT -k 10 "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "$name: exit $rc in $((SECONDS - t0)) s" | tee -a "$summary"
}

machine() {
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_mode,mig.mode.current,pcie.link.gen.current,pcie.link.width.current --format=csv 2>&1
  nvidia-smi topo -m 2>&1
  echo "CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-<unset>}"
  nproc
  "$py" - <<'EOF'
import importlib
for name in ("torch", "cupy", "numba", "numpy", "pyarrow", "pytest", "zmq", "cuda.bindings"):
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"))
    except Exception as e:
        print(name, "absent:", type(e).__name__, e)
import torch
print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device 0:", p.name, f"sm_{p.major}{p.minor}", p.multi_processor_count, "SMs", p.total_memory >> 20, "MiB")
EOF
  command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null || echo "no compute-sanitizer"
}

export -f machine; export py
step machine 15 bash -c machine
cp "$out/machine.log" "$out/device_info.txt"
step emulation 60 "$py" bench/cuda_vs_emulation.py
step compile 150 "$py" -m gpu_negsample.precompile
# A hung test (a first run on a GPU may hang) must not take the step's remaining tests with it.
per_test=()
"$py" -c "import pytest_timeout" 2>/dev/null && per_test=(--timeout 30)
step gpu_tests 90 "$py" -m pytest -q -rA -m gpu -p no:cacheprovider --continue-on-collection-errors "${per_test[@]}" \
  --junitxml="$out/gpu_tests.xml" "${GPU_TESTS[@]}"
grep -q "no CUDA device with cupy here" "$out/gpu_tests.log" && echo "gpu_tests: SKIPPED, no usable GPU" | tee -a "$summary"

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -1)
if [ -n "$sanitizer" ]; then
  # Memcheck slows kernels by 10-100x: the parity tests only, bounded.
  step memcheck 40 "$sanitizer" --tool memcheck --error-exitcode 97 --report-api-errors no \
    "$py" -m pytest -q -rA -m gpu -p no:cacheprovider --junitxml="$out/memcheck.xml" tests/test_cuda_parity.py
else
  echo "memcheck: skipped (no compute-sanitizer)" | tee -a "$summary"
fi

step bench 75 "$py" bench/bench_cuda.py --repeats 10 --out "$out"
step server 40 "$py" bench/bench_server.py --node --device cuda --results cuda --clients 1,4 --batch-size 4096 \
  --iters 20 --client-timeout 25 --out "$out"
grep -q "node server: SKIPPED" "$out/server.log" && echo "server: SKIPPED, no pyzmq on this machine" | tee -a "$summary"
step profile 45 "$py" bench/profile_request.py --device cuda --sizes 4096,65536,1048576 --calls 10 --out "$out"

echo "=== summary ($out)"
cat "$summary"
! grep -v -e ": exit 0 in" -e "no compute-sanitizer" -e "server: SKIPPED" "$summary" | grep -q .
