"""CPU benchmark: gpu_negsample's numba path beside what a user would write instead, in one run.

Table: make_catalogue(1M items, 1,000 categories with P(c) ~ 1/c, weight = N / rank over a
random rank, 4 dense and 1 ragged feature column, a string key, seed 0); positives drawn by
weight; k = 10 negatives each, avoid_conflict. Peers, measured in the same run on the same
positives: numpy (Generator.choice with p, per category) and torch.multinomial (per
category), both with replacement and rejecting the positive (neither has a vectorised
weighted draw without replacement per row; ours without replacement is set beside them).
Every case is timed once per round, rounds interleaved (so load from other work on the
machine falls on all cases alike), after a warm-up round; figures are medians. Only what
this run measures is reported; figures of other samplers measured elsewhere are in
ARCHITECTURE.md with their provenance. The machine's random-access limit (bench_memory.py)
is measured in the same run and printed beside the figures.

    python bench/bench_cpu.py [--items 1000000] [--batches 4096,65536] [--repeats 7] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
import torch

from bench_memory import print_limit, random_access_limit
from report import describe_machine, load_average, save

from gpu_negsample import NegativeSampler
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch


def interleaved_medians(cases: dict, repeats: int) -> dict:
    """Median seconds of each case (name -> callable): one warm-up round, then `repeats` rounds
    that each run every case once, in turn."""
    times = {name: [] for name in cases}
    for rep in range(repeats + 1):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            if rep:
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


class PerCategoryPeers:
    """What a user writes without us: per-category weighted choice, rejecting the positive."""

    def __init__(self, cat, seed=0):
        order = np.argsort(cat.categories, kind="stable")
        bounds = np.searchsorted(cat.categories[order], np.arange(cat.categories.max() + 2))
        self.items = {c: cat.ids[order[bounds[c]:bounds[c + 1]]] for c in np.unique(cat.categories)}
        w = {c: cat.weights[order[bounds[c]:bounds[c + 1]]].astype(np.float64) for c in self.items}
        self.p = {c: w[c] / w[c].sum() for c in w}
        self.tw = {c: torch.from_numpy(w[c]) for c in w}
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)

    def _per_category(self, pos_ids, pos_cats, k, draw):
        out = np.empty((pos_ids.shape[0], k), dtype=np.int64)
        for c in np.unique(pos_cats):
            rows = np.flatnonzero(pos_cats == c)
            got = draw(c, rows.size * k).reshape(rows.size, k)
            clash = got == pos_ids[rows, None]
            while clash.any():  # reject the positive itself and redraw those slots
                got[clash] = draw(c, int(clash.sum()))
                clash = got == pos_ids[rows, None]
            out[rows] = got
        return out

    def numpy_choice(self, pos_ids, pos_cats, k):
        return self._per_category(pos_ids, pos_cats, k,
                                  lambda c, n: self.rng.choice(self.items[c], size=n, p=self.p[c]))

    def torch_multinomial(self, pos_ids, pos_cats, k):
        return self._per_category(pos_ids, pos_cats, k, lambda c, n: self.items[c][
            torch.multinomial(self.tw[c], n, replacement=True, generator=self.gen).numpy()])


def numpy_gather(table, rows):
    """A plain numpy fancy-index gather of the same columns (ragged via an index of values,
    strings from a fixed-width bytes array made once beforehand, see bytes_table)."""
    out = {}
    for name, col in table.items():
        if isinstance(col, (torch.Tensor, np.ndarray)):
            out[name] = np.asarray(col)[rows]
        else:
            off = col.offsets()[0].numpy()
            starts, lengths = off[rows], off[rows + 1] - off[rows]
            new_off = np.concatenate([[0], np.cumsum(lengths)])
            idx = np.repeat(starts - new_off[:-1], lengths) + np.arange(new_off[-1])
            out[name] = (col.values().numpy()[idx], new_off)
    return out


def bytes_table(cat):
    """cat.table with its string column as one fixed-width bytes array, as numpy would hold it."""
    return {name: np.char.encode(col[0]) if isinstance(col, list) else col for name, col in cat.table.items()}


def nbytes(table):
    total = 0
    for v in table.values():
        if isinstance(v, tuple):
            total += sum(a.nbytes for a in v)
        elif isinstance(v, (torch.Tensor, np.ndarray)):
            total += v.nbytes
        else:
            total += v.values().nbytes + v.offsets()[0].nbytes
    return total


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--categories", type=int, default=1000)
    ap.add_argument("--batches", default="4096,65536", help="positive batch sizes, comma-separated")
    ap.add_argument("--k", type=int, default=10, help="negatives per positive")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--memory-mb", type=int, default=100, help="array size of the random-access limit")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    machine = describe_machine()
    print("machine:", json.dumps(machine))
    print(f"settings: make_catalogue({args.items:,} items, {args.categories} categories, n_dense=4, n_ragged=1, "
          f"seed=0), k={args.k}, avoid_conflict, batches {batches}, {args.repeats} interleaved rounds, medians")
    cat = make_catalogue(args.items, args.categories, n_dense=4, n_ragged=1, seed=0)

    def sampler(put_back=True):
        s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, put_back=put_back, device="cpu")
        s.reload(cat.table, progress=False)
        return s

    ours, ours_nr = sampler(), sampler(put_back=False)
    peers = PerCategoryPeers(cat)
    rng = np.random.default_rng(2)
    default = int(cat.ids[0])
    k = args.k
    cases, work, requests = {"load_index": sampler}, {}, {}
    for batch in batches:
        item = positive_batch(cat, batch, rng)[0]
        pos, cats = requests[batch] = item[DEDUP_TAG], item[SAMPLE_TAG]
        pos_np, cats_np = pos.values().numpy(), cats.values().numpy()
        key = f"{batch}x{k}"
        cases.update({
            f"put_back_{key}": lambda p=pos, c=cats: ours.sample_ids(p, k, c),
            f"no_put_back_{key}": lambda p=pos, c=cats: ours_nr.sample_ids(p, k, c),
            f"batch_wide_{key}": lambda p=pos, c=cats: ours.sample_ids(p, k, c, avoid_conflict_with_all_dedup_tags=True),
            f"numpy_choice_{key}": lambda p=pos_np, c=cats_np: peers.numpy_choice(p, c, k),
            f"torch_multinomial_{key}": lambda p=pos_np, c=cats_np: peers.torch_multinomial(p, c, k),
        })
        work.update({f"{name}_{key}": batch * k for name in
                     ("put_back", "no_put_back", "batch_wide", "numpy_choice", "torch_multinomial")})
        if batch == batches[0]:  # lookups and pack on this batch's positives and negatives
            ids = ours.combine_vector_with_sample_counts(pos.values(), k, ours.sample_ids(pos, k, cats))
            rows = ours.engine.backend.rows_or_default(None, ours.engine.state.placed_index, ids.numpy(), 0, False)
            cases.update({
                "valid_sample_ids": lambda i=ids: ours.valid_sample_ids(i, default),
                "pack_feature": lambda i=ids: ours.pack_feature(i, default),
                "numpy_gather": lambda r=rows, t=bytes_table(cat): numpy_gather(t, r),
            })
            work.update({"valid_sample_ids": ids.numel(), "pack_feature": ids.numel(), "numpy_gather": ids.numel()})
            pack_bytes = nbytes(ours.pack_feature(ids, default))
            numpy_bytes = nbytes(numpy_gather(bytes_table(cat), rows))  # its strings are as wide as the column's widest
    load_before = load_average()
    seconds = interleaved_medians(cases, args.repeats)
    results = {"machine": machine, "settings": vars(args), "seconds": seconds,
               "load_average_before_after": [load_before, load_average()],
               "load_index_s": seconds["load_index"]}
    for batch in batches:
        key = f"{batch}x{k}"
        r = {name: work[f"{name}_{key}"] / seconds[f"{name}_{key}"]
             for name in ("put_back", "no_put_back", "batch_wide", "numpy_choice", "torch_multinomial")}
        ours.sample_ids(requests[batch][0], k, requests[batch][1])
        r["alias_draws_per_negative"] = ours.engine.last_attempts / (batch * k)
        ours_nr.sample_ids(requests[batch][0], k, requests[batch][1])
        r["alias_draws_per_negative_no_put_back"] = ours_nr.engine.last_attempts / (batch * k)
        for peer in ("numpy_choice", "torch_multinomial"):
            r[f"put_back_x_{peer}"] = r["put_back"] / r[peer]
            r[f"no_put_back_x_{peer}"] = r["no_put_back"] / r[peer]
        results[f"sample_ids_{key}"] = r
        print(f"sample_ids {key}: put_back {r['put_back'] / 1e6:.2f} M/s "
              f"({r['put_back_x_numpy_choice']:.0f}x numpy {r['numpy_choice'] / 1e6:.3f} M/s, "
              f"{r['put_back_x_torch_multinomial']:.0f}x torch.multinomial {r['torch_multinomial'] / 1e6:.3f} M/s); "
              f"put_back=False {r['no_put_back'] / 1e6:.2f} M/s; batch-wide exclusion {r['batch_wide'] / 1e6:.2f} M/s; "
              f"alias draws per negative {r['alias_draws_per_negative']:.3f} "
              f"({r['alias_draws_per_negative_no_put_back']:.3f} without replacement)")
    n = work["pack_feature"]
    results["valid_sample_ids"] = {"ids": n, "ids_per_s": n / seconds["valid_sample_ids"]}
    results["pack_feature"] = {
        "rows": n, "bytes": pack_bytes, "rows_per_s": n / seconds["pack_feature"],
        "MBps": pack_bytes / seconds["pack_feature"] / 1e6, "numpy_gather_MBps": numpy_bytes / seconds["numpy_gather"] / 1e6,
    }
    p = results["pack_feature"]
    print(f"valid_sample_ids {n:,} ids: {results['valid_sample_ids']['ids_per_s'] / 1e6:.1f} M ids/s")
    print(f"pack_feature {n:,} rows ({pack_bytes / 1e6:.2f} MB): {p['MBps']:,.0f} MB/s, {p['rows_per_s'] / 1e6:.2f} M rows/s; "
          f"numpy fancy-index gather of the same rows {p['numpy_gather_MBps']:,.0f} MB/s "
          f"({p['MBps'] / p['numpy_gather_MBps']:.1f}x)")
    print(f"load + index of {args.items:,} rows: {results['load_index_s']:.3f} s")
    results["random_access"] = random_access_limit(args.memory_mb, args.repeats)
    print_limit(results["random_access"])
    print("load average (1, 5, 15 min) before / after the timed rounds:", results["load_average_before_after"])
    save(results, args.out, "bench_cpu", plot)


def plot(results, plt):
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    names = ["put_back", "no_put_back", "batch_wide", "numpy_choice", "torch_multinomial"]
    keys = [k[len("sample_ids_"):] for k in results if k.startswith("sample_ids_")]
    for j, key in enumerate(keys):
        vals = [results[f"sample_ids_{key}"][n] for n in names]
        ax[0].bar(np.arange(len(names)) + 0.8 / len(keys) * j, vals, width=0.8 / len(keys), label=key)
    ax[0].set_xticks(np.arange(len(names)) + 0.4 - 0.4 / len(keys), names, rotation=15)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("negatives / s")
    ax[0].set_title("sample_ids (medians)")
    ax[0].legend()
    p = results["pack_feature"]
    ax[1].bar(["ours", "numpy gather"], [p["MBps"], p["numpy_gather_MBps"]])
    ax[1].set_ylabel("MB/s")
    ax[1].set_title(f"pack_feature {p['rows']:,} rows")
    m = results["machine"]
    fig.suptitle(f"gpu_negsample CPU path, {m['cpus']} cores ({m['processor']}), load {m['load_average'][0]}")
    return fig


if __name__ == "__main__":
    main()
