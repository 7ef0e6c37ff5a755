"""Batch-wide sample_ids on a GPU against the same kernels on the emulated device, id for id.

The emulation runs kernels/*.cu through g++ on the CPU, so this needs no numba compile of
the CPU path: on a fresh GPU machine it is the first check that the GPU computes what CI
checked, in seconds. Batch-wide exclusion at 65,536 positives gives tails per-call prefix
sums (the excluded ids hold more than half of them), so both tail draws are compared; with
and without replacement. Prints the GPU's wall time per call too.

    python bench/cuda_vs_emulation.py [--items 200000] [--device cuda]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from gpu_negsample import NegativeSampler
from gpu_negsample.engine import RandomStream
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

K = 10


def main(argv=None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--categories", type=int, default=200)
    ap.add_argument("--sizes", default="4096,65536")
    ap.add_argument("--device", default="cuda", help="the device checked against the emulation")
    args = ap.parse_args(argv)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    cat = make_catalogue(args.items, args.categories, seed=0)
    all_equal = True
    for put_back in (True, False):
        checked, emulated = (NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, device=device,
                                             put_back=put_back, unsatisfiable="fill", fill_id=int(cat.ids[0]))
                             for device in (args.device, "emulated"))
        for sampler in (checked, emulated):
            sampler.reload(cat.table, progress=False)
        for size in (int(s) for s in args.sizes.split(",")):
            batch = positive_batch(cat, size, np.random.default_rng(size))[0]
            got, want = (s.engine.backend.to_host(s.engine.sample_ids(
                batch[DEDUP_TAG], K, batch[SAMPLE_TAG], avoid_conflict_with_all_dedup_tags=True, stream=RandomStream(7)))
                for s in (checked, emulated))
            equal = got.shape == want.shape and np.array_equal(got, want)
            all_equal &= equal

            def call():
                checked.sample_ids(batch[DEDUP_TAG], K, batch[SAMPLE_TAG], avoid_conflict_with_all_dedup_tags=True)
                sync()
            call()
            times = []
            for _ in range(10):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            verdict = "IDENTICAL" if equal else f"DIFFERENT ({int((got != want).sum()) if got.shape == want.shape else 'shape'})"
            print(f"put_back={put_back} batch-wide {size:,}x{K} on {args.items:,} items: {verdict} to the emulation; "
                  f"{args.device} call {1e6 * statistics.median(times):.0f} us", flush=True)
    return all_equal


if __name__ == "__main__":
    raise SystemExit(0 if main() else 1)
