"""CPU benchmark: gpu_negsample's numba path beside what a user would write instead.

Table: 1M items shaped like a real catalogue (1,000 categories with P(c) ~ 1/c, weight =
N / rank over a random rank, 4 dense and 4 ragged feature columns, a string key),
positives drawn by weight. Every figure is the median of repeated runs after a warm-up.

    python bench/bench_cpu.py [--items 1000000] [--repeats 7] [--out bench/results]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numba
import numpy as np
import torch

from report import save

from gpu_negsample import NegativeSampler
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

RECIS = {  # RecIS's C++ sampler built from source on this kind of machine, same table (issue #2)
    "sample_ids_4096x10": 1.3e5, "sample_ids_4096x10_no_put_back": 6.5e5,
    "valid_sample_ids": 7.5e5, "pack_MBps": (53, 86), "load_index_s": 1.7,
}


def median_time(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def numpy_gather(cat, rows):
    """A plain numpy fancy-index gather of the same columns (ragged via an index of values)."""
    out = {}
    for name, col in cat.table.items():
        if isinstance(col, torch.Tensor):
            out[name] = col.numpy()[rows]
        elif isinstance(col, list):
            out[name] = col[0][rows]
        else:
            off = col.offsets()[0].numpy()
            starts, lengths = off[rows], off[rows + 1] - off[rows]
            new_off = np.concatenate([[0], np.cumsum(lengths)])
            idx = np.repeat(starts - new_off[:-1], lengths) + np.arange(new_off[-1])
            out[name] = (col.values().numpy()[idx], new_off)
    return out


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
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(), "numba_threads": numba.get_num_threads(), "numba": numba.__version__,
        "numpy": np.__version__, "torch": torch.__version__, "python": platform.python_version(),
    }
    print("machine:", json.dumps(machine))
    print(f"settings: {args.items:,} items, {args.categories} categories, median of {args.repeats} runs")
    cat = make_catalogue(args.items, args.categories, seed=0)
    results = {"machine": machine, "settings": vars(args), "recis_reference": RECIS}

    def load():
        s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, device="cpu")
        s.reload(cat.table, progress=False)
        return s
    results["load_index_s"] = median_time(load, max(3, args.repeats // 2))
    sampler = load()
    nr_sampler = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, put_back=False, device="cpu")
    nr_sampler.reload(cat.table, progress=False)
    peers = PerCategoryPeers(cat)
    rng = np.random.default_rng(2)
    default = int(cat.ids[0])
    for batch, k in ((4096, 10), (65536, 10)):
        item = positive_batch(cat, batch, rng)[0]
        pos, cats = item[DEDUP_TAG], item[SAMPLE_TAG]
        pos_np, cats_np = pos.values().numpy(), cats.values().numpy()
        n = batch * k
        key = f"{batch}x{k}"
        r = {
            "ours": n / median_time(lambda: sampler.sample_ids(pos, k, cats), args.repeats),
            "ours_no_put_back": n / median_time(lambda: nr_sampler.sample_ids(pos, k, cats), args.repeats),
            "ours_batch_wide": n / median_time(lambda: sampler.sample_ids(
                pos, k, cats, avoid_conflict_with_all_dedup_tags=True), args.repeats),
            "numpy_choice": n / median_time(lambda: peers.numpy_choice(pos_np, cats_np, k), max(3, args.repeats // 2)),
            "torch_multinomial": n / median_time(lambda: peers.torch_multinomial(pos_np, cats_np, k),
                                                 max(3, args.repeats // 2)),
        }
        sampler.sample_ids(pos, k, cats)
        r["alias_draws_per_negative"] = sampler.engine.last_attempts / n
        r["x_torch_multinomial"] = r["ours"] / r["torch_multinomial"]
        r["x_numpy_choice"] = r["ours"] / r["numpy_choice"]
        results[f"sample_ids_{key}"] = r
        print(f"sample_ids {key}: ours {r['ours']:,.0f}/s (no put_back {r['ours_no_put_back']:,.0f}/s, "
              f"batch-wide exclusion {r['ours_batch_wide']:,.0f}/s), "
              f"numpy {r['numpy_choice']:,.0f}/s, torch.multinomial {r['torch_multinomial']:,.0f}/s -> "
              f"{r['x_torch_multinomial']:.1f}x torch, {r['x_numpy_choice']:.1f}x numpy; "
              f"{r['alias_draws_per_negative']:.3f} alias draws per negative")
        ids = sampler.combine_vector_with_sample_counts(pos.values(), k, sampler.sample_ids(pos, k, cats))
        v = ids.numel() / median_time(lambda: sampler.valid_sample_ids(ids, default), args.repeats)
        rows = sampler.engine.backend.rows_or_default(sampler.engine.state.index.arrays, ids.numpy(), 0)[0]
        t_pack = median_time(lambda: sampler.pack_feature(ids, default), args.repeats)
        t_np = median_time(lambda: numpy_gather(cat, rows), args.repeats)
        size = nbytes(sampler.pack_feature(ids, default))
        results[f"valid_sample_ids_{ids.numel()}"] = v
        results[f"pack_feature_{ids.numel()}"] = {
            "rows_per_s": ids.numel() / t_pack, "MBps": size / t_pack / 1e6,
            "numpy_gather_MBps": nbytes(numpy_gather(cat, rows)) / t_np / 1e6, "x_numpy_time": t_np / t_pack,
        }
        p = results[f"pack_feature_{ids.numel()}"]
        print(f"valid_sample_ids {ids.numel():,} ids: {v:,.0f} ids/s ({v / RECIS['valid_sample_ids']:.0f}x RecIS)")
        print(f"pack_feature {ids.numel():,} rows: {p['rows_per_s']:,.0f} rows/s, {p['MBps']:,.0f} MB/s; numpy "
              f"gather {p['numpy_gather_MBps']:,.0f} MB/s; ours/numpy speed {p['x_numpy_time']:.2f}")
    s4 = results["sample_ids_4096x10"]
    results["x_recis"] = {
        "sample_ids_4096x10": s4["ours"] / RECIS["sample_ids_4096x10"],
        "sample_ids_4096x10_no_put_back": s4["ours_no_put_back"] / RECIS["sample_ids_4096x10_no_put_back"],
        "sample_ids_65536x10": results["sample_ids_65536x10"]["ours"] / RECIS["sample_ids_4096x10"],
        "load_index": RECIS["load_index_s"] / results["load_index_s"],
    }
    print(f"load + index of {args.items:,} rows: {results['load_index_s']:.2f} s (RecIS {RECIS['load_index_s']} s)")
    print("vs RecIS:", json.dumps({k: round(v, 1) for k, v in results["x_recis"].items()}))
    save(results, args.out, "bench_cpu", plot)


def plot(results, plt):
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    names = ["ours", "ours_no_put_back", "ours_batch_wide", "numpy_choice", "torch_multinomial"]
    for j, key in enumerate(("4096x10", "65536x10")):
        vals = [results[f"sample_ids_{key}"][n] for n in names]
        ax[0].bar(np.arange(len(names)) + 0.4 * j, vals, width=0.4, label=key)
    ax[0].axhline(RECIS["sample_ids_4096x10"], color="k", ls="--", lw=1, label="RecIS 4096x10")
    ax[0].set_xticks(np.arange(len(names)) + 0.2, names, rotation=15)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("negatives / s")
    ax[0].set_title("sample_ids (median)")
    ax[0].legend()
    packs = [k for k in results if k.startswith("pack_feature_")]
    ax[1].bar([p.split("_")[-1] + "\nours" for p in packs], [results[p]["MBps"] for p in packs])
    ax[1].bar([p.split("_")[-1] + "\nnumpy" for p in packs], [results[p]["numpy_gather_MBps"] for p in packs])
    ax[1].set_ylabel("MB/s")
    ax[1].set_title("pack_feature vs numpy fancy-index gather")
    fig.suptitle(f"gpu_negsample CPU path, {results['machine']['cpus']} cores ({results['machine']['processor']})")
    return fig


if __name__ == "__main__":
    main()
