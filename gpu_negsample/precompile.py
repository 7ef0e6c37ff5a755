"""Compile the CPU path's numba kernels into the compile cache, several processes at once.

numba compiles a function in the process that first calls it, one function at a time: a
cold cache costs the first process about three minutes of one core on the RecIS pipeline
(``python -m gpu_negsample`` prints it as its compile line). On a machine with many cores
(a GPU node, an image build) this job loads a small table once, so its load kernels are
compiled first, then runs each pipeline entry point in its own process at once; each
process writes the machine code it compiled to the shared cache
(:mod:`gpu_negsample.compile_cache`), from which every later process loads it in seconds.

    python -m gpu_negsample.precompile [--jobs N]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from . import NegativeSampler
from .synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

# Large enough that every category holds more items than a positive asks for, small enough to load in a blink.
ITEMS, CATEGORIES, POSITIVES, NEGATIVES, SEED = 4096, 4, 64, 10, 2026


def _entry_points() -> dict:
    """{name: (sampler options, call(sampler, catalogue, batch))}: every kernel family of the CPU path."""
    def counts(batch):
        return torch.full((len(batch[0][DEDUP_TAG]),), NEGATIVES, dtype=torch.int64)

    def some_ids(cat, n):
        return torch.from_numpy(cat.ids[np.random.default_rng(SEED).integers(0, len(cat.ids), n)])

    def sample_ids(s, cat, b, **kw):
        return s.sample_ids(b[0][DEDUP_TAG], counts(b), b[0][SAMPLE_TAG], **kw)

    def pack_and_combine(s, cat, b):
        table = s.pack_feature(some_ids(cat, POSITIVES * (NEGATIVES + 1)), int(cat.ids[0]))
        return s.combine(b, table, counts(b), keep_positive_columns=True, label_column="label")

    return {
        "sample_ids": ({}, sample_ids),
        "sample_ids put_back=False": ({"put_back": False}, sample_ids),
        "sample_ids batch-wide": ({}, lambda s, c, b: sample_ids(s, c, b, avoid_conflict_with_all_dedup_tags=True)),
        "sample_ids put_back=False batch-wide": (
            {"put_back": False}, lambda s, c, b: sample_ids(s, c, b, avoid_conflict_with_all_dedup_tags=True)),
        "valid_sample_ids": ({}, lambda s, c, b: s.valid_sample_ids(some_ids(c, POSITIVES), int(c.ids[0]))),
        "combine_vector_with_sample_counts": ({}, lambda s, c, b: s.combine_vector_with_sample_counts(
            some_ids(c, POSITIVES), counts(b), some_ids(c, POSITIVES * NEGATIVES))),
        "pack_feature, combine": ({}, pack_and_combine),
        "sample (fused, log q)": ({}, lambda s, c, b: s.sample(b[0][DEDUP_TAG], counts(b), b[0][SAMPLE_TAG],
                                                             int(c.ids[0]), return_log_q=True)),
    }


def compile_entry_point(name: str | None) -> float:
    """Load the small table and call one entry point (None: only load); returns the seconds it took."""
    t0 = time.perf_counter()
    options, call = _entry_points()[name] if name else ({}, None)
    cat = make_catalogue(ITEMS, CATEGORIES, seed=SEED)
    with NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=SEED, device="cpu", **options) as sampler:
        sampler.reload(cat.table, progress=False)
        if call is not None:
            call(sampler, cat, positive_batch(cat, POSITIVES, np.random.default_rng(SEED)))
    return time.perf_counter() - t0


def precompile(jobs: int | None = None, report=print) -> float:
    """Fill the compile cache for every entry point; returns the wall seconds it took."""
    t0 = time.perf_counter()
    report(f"load kernels: {compile_entry_point(None):.1f} s")
    names = list(_entry_points())
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(names)))
    # spawn: each process starts its own numba threads (a fork would inherit the parent's)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, seconds in zip(names, pool.map(compile_entry_point, names)):
            report(f"{name}: {seconds:.1f} s")
    return time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m gpu_negsample.precompile", description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=None, help="processes at once (default: one per core, at most "
                                                          f"{len(_entry_points())})")
    args = p.parse_args(argv)
    print(f"compile cache filled in {precompile(args.jobs):.1f} s")


if __name__ == "__main__":
    main()
