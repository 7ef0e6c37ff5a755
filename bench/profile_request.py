"""Where a request's host time goes: cProfile of whole sampling calls, warm, per call kind.

For each size and call (sample_ids, sample_ids with batch-wide exclusion, the fused
sample() with log q): a warm-up, then --calls calls under cProfile; prints the wall time
per call and the functions with the most own time per call (cupy's, torch's and ours), and
writes the table to --out/profile_request.json. Run it on a GPU to see the host side of
the CUDA path; on ``--device emulated`` the emulated kernels' own time shows up as
``emulated_device`` entries.

    python bench/profile_request.py [--device cuda] [--sizes 4096,1048576] [--calls 20]
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gpu_negsample import NegativeSampler
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

K = 10


def _calls(sampler, batch, default_id) -> dict:
    dedup, tags = batch[DEDUP_TAG], batch[SAMPLE_TAG]
    return {
        "sample_ids": lambda: sampler.sample_ids(dedup, K, tags),
        "sample_ids batch-wide": lambda: sampler.sample_ids(dedup, K, tags, avoid_conflict_with_all_dedup_tags=True),
        "sample (fused, log q)": lambda: sampler.sample(dedup, K, tags, default_value=default_id, return_log_q=True),
    }


def profile(call, calls: int, sync, top: int) -> dict:
    """Wall seconds per call and the `top` functions by own time per call."""
    for _ in range(2):
        call()
    sync()
    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    for _ in range(calls):
        call()
        sync()
    profiler.disable()
    wall = (time.perf_counter() - t0) / calls
    stats = pstats.Stats(profiler)
    rows = sorted(((tt, nc, f"{Path(file).name}:{line}({name})") for (file, line, name), (_, nc, tt, _, _)
                   in stats.stats.items()), reverse=True)[:top]
    return {"wall_us_per_call": 1e6 * wall,
            "top": [{"own_us_per_call": 1e6 * tt / calls, "calls_per_call": nc / calls, "function": where}
                    for tt, nc, where in rows]}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--categories", type=int, default=1000)
    ap.add_argument("--sizes", default="4096,1048576")
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    cat = make_catalogue(args.items, args.categories, seed=0)
    sampler = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, device=args.device)
    sampler.reload(cat.table)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    machine = {"device": sampler.engine.backend.name, "host": platform.node(), "processor": platform.processor(),
               "cpus": os.cpu_count(), "torch": torch.__version__, "numpy": np.__version__,
               "python": platform.python_version(), "load_average": list(os.getloadavg())}
    print(f"machine: {json.dumps(machine)}\nsettings: {json.dumps(vars(args))}", flush=True)
    results = {"settings": vars(args), "device": sampler.engine.backend.name, "machine": machine}
    rng = np.random.default_rng(0)
    for size in (int(s) for s in args.sizes.split(",")):
        batch = positive_batch(cat, size, rng)[0]
        for name, call in _calls(sampler, batch, int(cat.ids[0])).items():
            r = results[f"{name} {size}x{K}"] = profile(call, args.calls, sync, args.top)
            print(f"\n== {name} {size:,}x{K}: {r['wall_us_per_call']:.0f} us per call (wall, synchronised)")
            for row in r["top"]:
                print(f"  {row['own_us_per_call']:9.1f} us {row['calls_per_call']:7.1f}x  {row['function']}")
            sys.stdout.flush()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "profile_request.json").write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
