"""The main job (console script ``gpu-negsample-demo``): synthesize a realistic catalogue,
load it, and run the whole RecIS pipeline (sample_ids -> valid_sample_ids ->
combine_vector_with_sample_counts -> pack_feature -> combine) over a stream of positive
batches, printing throughput.

    python -m gpu_negsample [--items 1000000] [--batches 300] [--batch-size 4096] ...
    gpu-negsample-demo [same options]

The kernels are compiled (or loaded from the compile cache) by a warm-up on a small
catalogue before anything is timed; the compile time is printed on its own line, so the
throughput figures are those of a warm process on the first run as on every later one.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import time

import numba
import numpy as np
import torch
from tqdm.auto import tqdm

from . import NegativeSampler
from .synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

STAGES = ("sample_ids", "valid_sample_ids", "combine_vector", "pack_feature", "combine")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m gpu_negsample (or gpu-negsample-demo)",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=1_000_000, help="items in the negative table")
    p.add_argument("--categories", type=int, default=1000, help="categories, P(c) ~ 1/c")
    p.add_argument("--batches", type=int, default=300, help="positive batches to process")
    p.add_argument("--batch-size", type=int, default=4096, help="positives per batch")
    p.add_argument("--negatives", type=int, default=10, help="negatives per positive")
    p.add_argument("--no-put-back", action="store_true", help="sample without replacement")
    p.add_argument("--seed", type=int, default=2026)
    return p.parse_args(argv)


# The warm-up catalogue: large enough that every category holds more items than a
# positive asks for (so no row is unsatisfiable), small enough to load in a blink.
WARM_UP_ITEMS, WARM_UP_CATEGORIES, WARM_UP_POSITIVES = 4096, 4, 64


def make_sampler(args, **options) -> NegativeSampler:
    """The job's sampler, as the command line configures it."""
    return NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, put_back=not args.no_put_back, seed=args.seed,
                           **options)


def warm_up(args) -> float:
    """Run reload and every pipeline stage once on a small catalogue with the job's settings,
    so that numba compiles (or loads from its cache) every kernel the timed run will call.
    Returns the seconds it took: the compile time, as the warm-up's own work is negligible."""
    t0 = time.perf_counter()
    cat = make_catalogue(WARM_UP_ITEMS, WARM_UP_CATEGORIES, seed=args.seed)
    # "fill": a warm-up must never fail on its tiny table, whatever --negatives asks for.
    with make_sampler(args, unsatisfiable="fill", fill_id=int(cat.ids[0])) as sampler:
        sampler.reload(cat.table, progress=False)
        _pipeline(sampler, positive_batch(cat, WARM_UP_POSITIVES, np.random.default_rng(args.seed)),
                  args.negatives, int(cat.ids[0]))
    return time.perf_counter() - t0


def _pipeline(sampler: NegativeSampler, batch: list, negatives: int, default_id: int) -> tuple[list, dict, list]:
    """One positive batch through the five RecIS stages: (stage end times, packed table, combined batch)."""
    item = batch[0]
    counts = torch.full((len(item[DEDUP_TAG]),), negatives, dtype=torch.int64)
    marks = [time.perf_counter()]
    neg = sampler.sample_ids(item[DEDUP_TAG], counts, item[SAMPLE_TAG])
    marks.append(time.perf_counter())
    pos = sampler.valid_sample_ids(item[DEDUP_TAG].values(), default_id)
    marks.append(time.perf_counter())
    ids = sampler.combine_vector_with_sample_counts(pos, counts, neg)
    marks.append(time.perf_counter())
    table = sampler.pack_feature(ids, default_id)
    marks.append(time.perf_counter())
    out = sampler.combine(batch, table, counts, keep_positive_columns=True, label_column="label")
    marks.append(time.perf_counter())
    return marks, table, out


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # The package's INFO log repeats the table and index that describe() prints below.
    logging.getLogger("gpu_negsample").setLevel(logging.WARNING)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, numba threads {numba.get_num_threads()}, "
          f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"compile (numba kernels, or loading them from the compile cache): {warm_up(args):.1f} s")
    t0 = time.perf_counter()
    cat = make_catalogue(args.items, args.categories, seed=args.seed)
    print(f"synthesized {args.items:,} items x {args.categories:,} categories in {time.perf_counter() - t0:.1f} s")
    sampler = make_sampler(args)
    t0 = time.perf_counter()
    sampler.reload(cat.table, progress=True)
    load_s = time.perf_counter() - t0
    print(sampler.describe())
    default_id = int(cat.ids[0])
    rng = np.random.default_rng(args.seed)
    batches = [positive_batch(cat, args.batch_size, rng) for _ in range(min(args.batches, 16))]
    spent = dict.fromkeys(STAGES, 0.0)
    packed_bytes = 0
    rows_out = 0
    for b in tqdm(range(args.batches), desc="batches", unit="batch"):
        marks, table, out = _pipeline(sampler, batches[b % len(batches)], args.negatives, default_id)
        for stage, start, end in zip(STAGES, marks, marks[1:]):
            spent[stage] += end - start
        packed_bytes += _nbytes(table)
        rows_out += len(out[0]["label"])
    total = sum(spent.values())
    n_neg = args.batches * args.batch_size * args.negatives
    print(f"\nload + index: {load_s:.2f} s")
    print(f"{args.batches} batches x {args.batch_size} positives x {args.negatives} negatives, "
          f"put_back={not args.no_put_back}: {total:.2f} s in the pipeline")
    for stage in STAGES:
        print(f"  {stage:<18} {spent[stage]:7.3f} s  {100 * spent[stage] / total:5.1f} %")
    print(f"  negatives / s      {n_neg / spent['sample_ids']:,.0f} (sample_ids alone)")
    print(f"  pack_feature       {rows_out / spent['pack_feature']:,.0f} rows/s, "
          f"{packed_bytes / spent['pack_feature'] / 1e9:.2f} GB/s")
    print(f"  end to end         {rows_out / total:,.0f} training rows/s")


def _nbytes(table: dict) -> int:
    total = 0
    for v in table.values():
        if isinstance(v, torch.Tensor):
            total += v.nbytes
        elif isinstance(v, np.ndarray):
            total += v.nbytes
        else:
            total += v.values().nbytes + v.offsets()[0].nbytes
    return total


if __name__ == "__main__":
    main()
