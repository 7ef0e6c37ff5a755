"""Kernel throughput of the CUDA backend on one GPU, beside its peers and the GPU's own limits.

In one run on one device: sample_ids samples/s at 4096x10, 65536x10 and 1Mx10 (the kernels
alone, timed with CUDA events, the whole sample_ids call, and the host time per call), the
same without replacement and with batch-wide exclusion, and the fused sample() with every
feature and log q; torch.multinomial (per category, as a user would write it, and one
global call with no categories) and cupy's weighted choice; feature gather GB/s from
GPU-resident columns against the measured device-to-device copy bandwidth and from pinned
host columns (UVA) against the measured pinned host-to-device bandwidth; valid ids and hash
lookups per second; and the largest sample_ids answer checked against the CPU path's, id
for id. Medians of --repeats runs after a warm-up.

Every figure is written to --out/bench_cuda.json the moment it is measured, and a section
that fails records its error and the next one runs: a run cut short (a timeout, a crash)
keeps what it measured. The PNG is drawn at the end.

    python bench/bench_cuda.py [--device cuda] [--items 1000000] [--repeats 20] [--out bench/results]

--device emulated runs every code path on the CPU emulation at toy sizes (a smoke test;
its figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

from gpu_negsample import NegativeSampler
from gpu_negsample.engine import RandomStream
from gpu_negsample.backends.cuda.gather import TableKernels, gather_table
from gpu_negsample.backends.protocol import host_empty
from gpu_negsample.columns import DENSE, Column
from report import Figures, Run, save

from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

K = 10
MULTINOMIAL_CAP = 2**24  # torch.multinomial on CUDA refuses more categories than this
TARGETS = {"sample_1Mx10_per_s": 1e10, "sample_1Mx10_call_per_s": 3e9, "sample_4096x10_call_s": 100e-6,
           "fused_4096x10_call_s": 300e-6, "gather_gpu_fraction_of_copy": 0.7, "gather_uva_fraction_of_h2d": 0.7}


class Clock:
    """Median seconds of a callable: CUDA events on the current stream on a GPU, wall time otherwise."""

    def __init__(self, on_gpu: bool, repeats: int):
        self.on_gpu, self.repeats = on_gpu, repeats

    def __call__(self, fn, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            if self.on_gpu:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def host(self, fn) -> float:
        """Median CPU time of the calling thread per call (a spinning host wait included)."""
        def timed():
            t0 = time.thread_time()
            fn()
            return time.thread_time() - t0
        for _ in range(2):
            fn()
        return statistics.median(timed() for _ in range(self.repeats))

    def wall(self, fn) -> float:
        """Median wall time of a whole call (host work included), synchronised at the end."""
        def synced():
            fn()
            if self.on_gpu:
                torch.cuda.synchronize()
        saved, self.on_gpu = self.on_gpu, False
        try:
            return self(synced)
        finally:
            self.on_gpu = saved


def machine(sampler) -> dict:
    info = {"device": sampler.engine.backend.name, "torch": torch.__version__, "python": platform.python_version(),
            "host": platform.node(), "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        import cupy
        info.update(gpu=torch.cuda.get_device_name(0), cupy=cupy.__version__,
                    driver=cupy.cuda.runtime.driverGetVersion(), runtime=cupy.cuda.runtime.runtimeGetVersion())
    return info


def _kernels_s(sampler, batch, clock, avoid_all: bool = False) -> float:
    """Median time of the sampling kernels alone, on inputs staged once."""
    engine, backend = sampler.engine, sampler.engine.backend
    with backend.request() as rq:
        inputs = engine._prepare(engine.state, rq, batch[DEDUP_TAG], K, batch[SAMPLE_TAG], True, avoid_all,
                                 engine.stream).inputs
        t = clock(lambda: backend.sample(rq, inputs))
        rq.finish()
    return t


def _calls(r: dict, prefix: str, n: int, clock, call) -> None:
    """Whole-call figures of `call` (n negatives each): wall time synchronised, host CPU time."""
    r[f"{prefix}_call_s"] = clock.wall(call)
    r[f"{prefix}_call_per_s"] = n / r[f"{prefix}_call_s"]
    r[f"{prefix}_host_us_per_call"] = 1e6 * clock.host(call)


def bench_sampling(figures: Figures, sampler, cat, sizes, clock, rng, on_gpu) -> None:
    """Per size: kernels, whole calls and peers, with replacement."""
    by_cat = np.argsort(cat.categories, kind="stable")
    bounds = np.searchsorted(cat.categories[by_cat], np.arange(cat.categories.max() + 2))
    device = "cuda" if on_gpu else "cpu"
    weights_all = torch.from_numpy(cat.weights.astype(np.float32)).to(device)
    per_cat_w = {c: weights_all[torch.from_numpy(by_cat[bounds[c]:bounds[c + 1]]).to(device)]
                 for c in np.unique(cat.categories)}
    for b in sizes:
        batch = positive_batch(cat, b, rng)[0]
        dedup, tags = batch[DEDUP_TAG], batch[SAMPLE_TAG]
        n = b * K
        r = figures[f"{b}x{K}"] = Figures(figures._flush)
        r["kernels_s"] = _kernels_s(sampler, batch, clock)
        r["kernels_per_s"] = n / r["kernels_s"]
        _calls(r, "sample_ids", n, clock, lambda: sampler.sample_ids(dedup, K, tags))
        pos_cats = tags.values().numpy()
        groups = [(c, int((pos_cats == c).sum())) for c in np.unique(pos_cats)]

        def torch_per_category():
            for c, m in groups:
                torch.multinomial(per_cat_w[c], m * K, replacement=True)
        r["torch_multinomial_per_category_per_s"] = n / clock(torch_per_category, warmup=1)
        if cat.ids.shape[0] <= MULTINOMIAL_CAP:
            r["torch_multinomial_global_per_s"] = n / clock(lambda: torch.multinomial(weights_all, n, replacement=True))
        else:
            r["torch_multinomial_global_per_s"] = None  # cannot run: more than 2^24 categories
        if on_gpu:
            import cupy

            p = cupy.asarray(cat.weights / cat.weights.sum())
            r["cupy_choice_global_per_s"] = n / clock(lambda: cupy.random.choice(cat.ids.shape[0], n, p=p), warmup=1)
        r["x_torch_per_category"] = r["kernels_per_s"] / r["torch_multinomial_per_category_per_s"]
        if r["torch_multinomial_global_per_s"]:
            r["x_torch_global"] = r["kernels_per_s"] / r["torch_multinomial_global_per_s"]
        if "cupy_choice_global_per_s" in r:
            r["x_cupy_choice"] = r["kernels_per_s"] / r["cupy_choice_global_per_s"]
        print(f"sample {b:>8,}x{K}: kernels {r['kernels_per_s']:.3e}/s, sample_ids call {r['sample_ids_call_per_s']:.3e}/s "
              f"({1e6 * r['sample_ids_call_s']:.0f} us, host {r['sample_ids_host_us_per_call']:.0f} us); "
              f"torch.multinomial per category {r['torch_multinomial_per_category_per_s']:.3e}/s "
              f"(ours x{r['x_torch_per_category']:.0f})"
              + (f", global {r['torch_multinomial_global_per_s']:.3e}/s" if r["torch_multinomial_global_per_s"] else
                 ", global: cannot run (> 2^24 categories)")
              + (f", cupy choice {r['cupy_choice_global_per_s']:.3e}/s" if "cupy_choice_global_per_s" in r else ""),
              flush=True)


def bench_variants(figures: Figures, sampler, distinct, cat, sizes, clock, rng) -> None:
    """Per size: without replacement, with batch-wide exclusion, and the fused sample() with
    every feature and log q (measured last: a run cut short loses these first)."""
    default = int(cat.ids[0])
    for b in sizes:
        batch = positive_batch(cat, b, rng)[0]
        dedup, tags = batch[DEDUP_TAG], batch[SAMPLE_TAG]
        n = b * K
        r = figures[f"{b}x{K}"] = Figures(figures._flush)
        r["distinct_kernels_per_s"] = n / _kernels_s(distinct, batch, clock)
        _calls(r, "distinct", n, clock, lambda: distinct.sample_ids(dedup, K, tags))
        r["batch_exclusion_kernels_per_s"] = n / _kernels_s(sampler, batch, clock, avoid_all=True)
        _calls(r, "batch_exclusion", n, clock,
               lambda: sampler.sample_ids(dedup, K, tags, avoid_conflict_with_all_dedup_tags=True))
        _calls(r, "fused", n, clock, lambda: sampler.sample(dedup, K, tags, default_value=default, return_log_q=True))
        print(f"variants {b:>8,}x{K}: put_back=False {r['distinct_call_per_s']:.3e}/s, batch-wide exclusion "
              f"{r['batch_exclusion_call_per_s']:.3e}/s, fused sample() {1e6 * r['fused_call_s']:.0f} us "
              f"(host {r['fused_host_us_per_call']:.0f} us)", flush=True)


def check_against_cpu(figures: Figures, sampler, cat, size: int, rng) -> None:
    """The largest sample_ids answer, from one random stream on both paths, compared id for id."""
    cpu = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, device="cpu")
    cpu.reload(cat.table)
    batch = positive_batch(cat, size, rng)[0]
    got, want = (s.engine.sample_ids(batch[DEDUP_TAG], K, batch[SAMPLE_TAG], stream=RandomStream(99))
                 for s in (sampler, cpu))
    got, want = sampler.engine.backend.to_host(got), np.asarray(want)
    figures["negatives"] = int(want.shape[0])
    figures["mismatches"] = int((got != want).sum()) if got.shape == want.shape else -1
    figures["equal"] = figures["mismatches"] == 0
    print(f"{size:,}x{K} against the CPU path: {'identical' if figures['equal'] else 'DIFFERENT'} "
          f"({figures['mismatches']} mismatches of {figures['negatives']:,})", flush=True)


def bandwidths(dev, clock, nbytes) -> dict:
    """Device-to-device copy and pinned host-to-device copy, bytes copied per second."""
    src, dst = dev.empty((nbytes,), torch.uint8), dev.empty((nbytes,), torch.uint8)
    src.fill_(1)
    pinned = dev.host_view(dev.allocate_host(nbytes))
    pinned.fill_(1)
    return {"d2d_copy_Bps": nbytes / clock(lambda: dst.copy_(src)),
            "pinned_h2d_Bps": nbytes / clock(lambda: dst.copy_(pinned, non_blocking=True))}


def bench_gather(sampler, dev, clock, n_items, n_rows, width, rng, limits) -> dict:
    """One dense column of `width` float32 per row, GPU-resident and read from pinned memory."""
    backend = sampler.engine.backend
    host = dev.allocate_host(n_items * width * 4).view(np.float32).reshape(n_items, width)
    host[:] = rng.random((n_items, width), dtype=np.float32)
    rows = rng.integers(0, n_items, n_rows).astype(np.int64)
    out_bytes = n_rows * width * 4
    r = {"row_bytes": width * 4, "rows": n_rows}
    with backend.request() as rq:
        rows_d = rq.inputs(rows=rows)["rows"]
        for key, values in (("gpu_resident_Bps", dev.upload(host)), ("pinned_uva_Bps", dev.host_view(host))):
            column = {"x": Column("x", DENSE, values)}
            r[key] = out_bytes / clock(lambda: gather_table(dev, rq, column, TableKernels([], None), rows_d,
                                                            host_empty))
        rq.finish()
    r["gpu_fraction_of_copy"] = r["gpu_resident_Bps"] / limits["d2d_copy_Bps"]
    r["uva_fraction_of_h2d"] = r["pinned_uva_Bps"] / limits["pinned_h2d_Bps"]
    print(f"gather {n_rows:,} rows x {width * 4} B: GPU-resident {r['gpu_resident_Bps'] / 1e9:.1f} GB/s "
          f"({100 * r['gpu_fraction_of_copy']:.0f} % of d2d copy {limits['d2d_copy_Bps'] / 1e9:.1f} GB/s); pinned UVA "
          f"{r['pinned_uva_Bps'] / 1e9:.1f} GB/s ({100 * r['uva_fraction_of_h2d']:.0f} % of pinned H2D "
          f"{limits['pinned_h2d_Bps'] / 1e9:.1f} GB/s)")
    return r


def bench_lookups(sampler, cat, clock, n_ids, rng) -> dict:
    backend, placed = sampler.engine.backend, sampler.engine.state.placed_index
    ids = np.where(rng.random(n_ids) < 0.9, rng.choice(cat.ids, n_ids), rng.integers(-2**62, 2**62, n_ids))
    with backend.request() as rq:
        ids_d = rq.inputs(ids=ids)["ids"]
        r = {"ids": n_ids,
             "valid_ids_per_s": n_ids / clock(lambda: backend.valid_ids(rq, placed, ids_d, -1)),
             "hash_lookup_per_s": n_ids / clock(lambda: backend.rows_or_default(rq, placed, ids_d, 0, False))}
        rq.finish()
    print(f"valid ids {r['valid_ids_per_s']:.3e}/s, id->row lookups {r['hash_lookup_per_s']:.3e}/s ({n_ids:,} ids, 10 % absent)")
    return r


def bench_pack(sampler, cat, clock, n_rows, rng) -> dict:
    ids = torch.from_numpy(rng.choice(cat.ids, n_rows))
    t = clock.wall(lambda: sampler.pack_feature(ids, int(cat.ids[0])))
    print(f"pack_feature {n_rows:,} rows (every column): {n_rows / t:.3e} rows/s")
    return {"rows": n_rows, "rows_per_s": n_rows / t}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--categories", type=int, default=1000)
    ap.add_argument("--sizes", default="4096,65536,1048576")
    ap.add_argument("--gather-rows", type=int, default=1 << 22)
    ap.add_argument("--lookup-ids", type=int, default=1 << 24)
    ap.add_argument("--copy-mib", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    run = Run(args.out, "bench_cuda")
    results = run.results
    cat = make_catalogue(args.items, args.categories, seed=0)
    sampler = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, device=args.device)
    distinct = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, device=args.device, put_back=False)
    t0 = time.perf_counter()
    sampler.reload(cat.table)
    results.update(machine=machine(sampler), settings=vars(args), reload_s=time.perf_counter() - t0)
    distinct.reload(cat.table)
    run.flush()
    dev = sampler.engine.backend.device
    clock = Clock(on_gpu, args.repeats)
    print(json.dumps(results["machine"]))
    print(sampler.describe())
    with run.section("sample_ids") as figures:
        bench_sampling(figures, sampler, cat, sizes, clock, rng, on_gpu)
    with run.section("check_against_cpu") as figures:
        check_against_cpu(figures, sampler, cat, max(sizes), rng)
    with run.section("limits") as figures, dev.active():
        figures.update(bandwidths(dev, clock, args.copy_mib << 20))
    with run.section("gather") as figures:
        figures.update(bench_gather(sampler, dev, clock, args.items, args.gather_rows, 16, rng, results["limits"]))
    with run.section("lookups") as figures:
        figures.update(bench_lookups(sampler, cat, clock, args.lookup_ids, rng))
    with run.section("pack_feature") as figures:
        figures.update(bench_pack(sampler, cat, clock, min(args.gather_rows, 1 << 20), rng))
    for final in (False, True):  # the targets once before the variants, in case the run is cut short there
        if final:
            with run.section("variants") as figures:
                bench_variants(figures, sampler, distinct, cat, sizes, clock, rng)
        with run.section("targets") as figures:
            targets(figures, results, sizes, printed=final)
    save(results, args.out, "bench_cuda", plot)
    return results


def targets(figures: Figures, results: dict, sizes: list, printed: bool = True) -> None:
    """Each target of the issue beside what this run measured (rates: at least; times: at most)."""
    sample, variants = results["sample_ids"], results.get("variants", {})
    largest, smallest = sample.get(f"{max(sizes)}x{K}", {}), sample.get(f"{min(sizes)}x{K}", {})
    gather = results.get("gather", {})
    measured = {"sample_1Mx10_per_s": largest.get("kernels_per_s"),
                "sample_1Mx10_call_per_s": largest.get("sample_ids_call_per_s"),
                "sample_4096x10_call_s": smallest.get("sample_ids_call_s"),
                "fused_4096x10_call_s": variants.get(f"{min(sizes)}x{K}", {}).get("fused_call_s"),
                "gather_gpu_fraction_of_copy": gather.get("gpu_fraction_of_copy"),
                "gather_uva_fraction_of_h2d": gather.get("uva_fraction_of_h2d")}
    for name, want in TARGETS.items():
        got = measured[name]
        is_time = name.endswith("_call_s")  # seconds: at most; rates and fractions: at least
        met = None if got is None else (got <= want if is_time else got >= want)
        figures[name] = {"measured": got, "target": want, "met": met}
        if printed:
            print(f"target {name}: {'-' if got is None else f'{got:.3g}'} (target {want:g}) "
                  f"{ {True: 'met', False: 'NOT met', None: 'not measured'}[met] }")


def plot(results, plt):
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    sizes = [s for s in results["sample_ids"] if s != "error"]
    peers = ["kernels_per_s", "sample_ids_call_per_s", "torch_multinomial_per_category_per_s",
             "torch_multinomial_global_per_s", "cupy_choice_global_per_s"]
    for j, peer in enumerate(peers):
        vals = [results["sample_ids"][s].get(peer) or 0 for s in sizes]
        ax[0].bar(np.arange(len(sizes)) + 0.16 * j, vals, width=0.16, label=peer.replace("_per_s", ""))
    ax[0].set_xticks(np.arange(len(sizes)) + 0.32, sizes)
    ax[0].set_yscale("log")
    ax[0].set_ylabel("negatives / s")
    ax[0].set_title("sampling (median)")
    ax[0].legend(fontsize=7)
    g, lim, lk = results.get("gather", {}), results.get("limits", {}), results.get("lookups", {})
    if "gpu_resident_Bps" in g and "d2d_copy_Bps" in lim:  # (a section that failed has only its error)
        ax[1].bar(["gather\nGPU-resident", "d2d copy", "gather\npinned UVA", "pinned H2D"],
                  [g["gpu_resident_Bps"] / 1e9, lim["d2d_copy_Bps"] / 1e9, g["pinned_uva_Bps"] / 1e9,
                   lim["pinned_h2d_Bps"] / 1e9], color=["C0", "grey", "C1", "grey"])
        ax[1].set_title(f"gather of {g['row_bytes']} B rows vs copy limits")
    ax[1].set_ylabel("GB/s")
    if "valid_ids_per_s" in lk:
        ax[2].bar(["valid ids", "id->row"], [lk["valid_ids_per_s"], lk["hash_lookup_per_s"]])
    ax[2].set_ylabel("ids / s")
    ax[2].set_title("hash lookups")
    fig.suptitle(f"gpu_negsample CUDA kernels on {results['machine'].get('gpu', results['machine']['device'])}")
    return fig


if __name__ == "__main__":
    main()
