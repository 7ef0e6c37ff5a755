"""Timeline of sample_ids calls as bench_cpu.py runs them: where a call's time goes, in microseconds.

Each round runs bench_cpu.py's sequence of cases (load + index, the sampling cases, valid
ids, pack, numpy's gather; the numpy / torch peers only at the batches given by --peers,
they take seconds at 65536) and records, for every put_back and put_back=False call:
perf_counter marks around the engine's stages (``_prepare``, ``CpuBackend.sample``,
``finish``, ``_raise_for``) and time stamps (rdtsc) inside an instrumented copy of the
sampling kernels: region entry, the parallel loop's start, each chunk's (thread's) start
and end, each block's start and end, the loop's end. Prints per stage the median over the
rounds [min..max], and per call when the second thread started its chunk.

The instrumented copy is made from gpu_negsample/backends/cpu/sample.py by text
substitution (a changed kernel that no longer matches fails here, loudly).

    python bench/timeline_sample.py [--rounds 7] [--peers 4096]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
import time
import types

import numpy as np
from llvmlite import ir
from numba import njit, types as nbtypes
from numba.core import cgutils
from numba.extending import intrinsic

from bench_cpu import PerCategoryPeers, bytes_table, numpy_gather

import gpu_negsample
from gpu_negsample import NegativeSampler, engine as engine_mod
from gpu_negsample.backends import cpu as cpu_backend
from gpu_negsample.backends.cpu import request as cpu_request
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch


@intrinsic
def rdtsc(typingctx):
    """The CPU's time stamp counter (constant rate on this VM: constant_tsc, nonstop_tsc)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), []),
                                            "llvm.readcyclecounter")
        return builder.call(fn, [])
    return nbtypes.int64(), codegen


@njit
def now():
    return rdtsc()


# (what, with what) in sample.py: each must match exactly once per kernel (twice in all)
_STAMPS = [
    ("                    call, k0, k1, fill_id, out, status, counters, threads):\n",
     "                    call, k0, k1, fill_id, out, status, counters, threads, meta, cst, bst):\n"
     "    meta[0] = rdtsc()\n"),
    ("    taken = np.zeros(1, dtype=np.int64)\n    for c in nb.prange(n_chunks):\n",
     "    taken = np.zeros(1, dtype=np.int64)\n    meta[1] = rdtsc()\n    for c in nb.prange(n_chunks):\n"
     "        cst[c, 0] = rdtsc()\n        cst[c, 1] = nb.get_thread_id()\n"),
    ("            if lo == hi:\n                break\n",
     "            if lo == hi:\n                break\n            bst[lo // BLOCK_ROWS, 0] = c\n"
     "            bst[lo // BLOCK_ROWS, 1] = rdtsc()\n"),
    ("            _tally_block(req_offsets, req_segs, status, lo, hi, tally)\n        tallies[c] = tally\n"
     "    _report(tallies, counters)\n",
     "            _tally_block(req_offsets, req_segs, status, lo, hi, tally)\n"
     "            bst[lo // BLOCK_ROWS, 2] = rdtsc()\n        tallies[c] = tally\n        cst[c, 2] = rdtsc()\n"
     "    meta[2] = rdtsc()\n    _report(tallies, counters)\n    meta[3] = rdtsc()\n"),
]


def instrumented_kernels():
    """The sampling kernels of sample.py with time stamps (see _STAMPS), as a module."""
    src_path = os.path.join(os.path.dirname(gpu_negsample.__file__), "backends", "cpu", "sample.py")
    src = open(src_path).read()
    for old, new in _STAMPS:
        if src.count(old) != 2:
            raise SystemExit(f"timeline_sample.py: sample.py no longer has, once per kernel:\n{old}")
        src = src.replace(old, new)
    for rel, absolute in (("from ...", "from gpu_negsample."), ("from ..", "from gpu_negsample.backends."),
                          ("from .", "from gpu_negsample.backends.cpu.")):
        src = src.replace(rel, absolute)
    path = os.path.join(tempfile.mkdtemp(), "timeline_kernels.py")
    with open(path, "w") as f:
        f.write(src.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location("timeline_kernels", path)
    module = importlib.util.module_from_spec(spec)
    module.rdtsc = rdtsc  # a global of the copy's kernels
    spec.loader.exec_module(module)
    return module


class Recorder:
    """Marks of the call being recorded (None: not recording) and its kernel's stamps."""

    def __init__(self):
        self.marks = None
        self.stamps = None

    def mark(self, name):
        if self.marks is not None:
            self.marks[name] = time.perf_counter_ns()

    def wrap(self, cls, name, static=False):
        orig = getattr(cls, name)

        def wrapped(*a, **k):
            self.mark(name + ">")
            result = orig(*a, **k)
            self.mark(name + "<")
            return result
        setattr(cls, name, staticmethod(wrapped) if static else wrapped)

    def kernel(self, fn, block_rows):
        def wrapped(*args):
            n_blocks = max(1, (args[7].shape[0] + block_rows - 1) // block_rows)  # row_total
            meta, cst, bst = np.zeros(4, np.int64), np.zeros((64, 3), np.int64), np.zeros((n_blocks, 3), np.int64)
            self.mark("kernel>")
            fn(*args, meta, cst, bst)
            self.mark("kernel<")
            self.stamps = meta, cst, bst
        return wrapped


def stages(marks, meta, cst, bst, ns):
    """One call's stages (microseconds) from its marks (perf_counter ns) and stamps (TSC, ns(t) converts)."""
    meta = [ns(t) for t in meta]
    chunks = [(ns(a), int(thread), ns(b)) for a, thread, b in cst if a]
    blocks = sorted((ns(a), ns(b), int(c)) for c, a, b in bst)
    ends = {}
    for a, b, c in blocks:
        ends[c] = max(ends.get(c, 0), b)
    t0 = marks["call>"]
    return {
        "call entry -> _prepare": marks["_prepare>"] - t0,
        "_prepare": marks["_prepare<"] - marks["_prepare>"],
        "sample(): allocations, exclusion": marks["kernel>"] - marks["sample>"],
        "kernel dispatch": meta[0] - marks["kernel>"],
        "kernel entry -> parallel loop (plan, tallies)": meta[1] - meta[0],
        "loop -> first chunk starts": min(c[0] for c in chunks) - meta[1],
        "loop -> second thread starts": max(c[0] for c in chunks) - meta[1] if len(chunks) > 1 else float("nan"),
        "blocks: first start -> last end": blocks[-1][1] - blocks[0][0],
        "blocks: busy time per thread": sum(b - a for a, b, _ in blocks) / len(ends),
        "first block": blocks[0][1] - blocks[0][0],
        "median block": statistics.median(b - a for a, b, _ in blocks),
        "end imbalance (threads' last block ends)": max(ends.values()) - min(ends.values()),
        "last block end -> loop end (barrier)": meta[2] - blocks[-1][1],
        "tallies -> kernel exit": meta[3] - meta[2],
        "kernel exit -> return": marks["kernel<"] - meta[3],
        "return -> sample() end": marks["sample<"] - marks["kernel<"],
        "finish, _raise_for": marks["_raise_for<"] - marks["finish>"],
        "-> call returns": marks["call<"] - marks["_raise_for<"],
        "call": marks["call<"] - t0,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--peers", default="4096", help="batches whose numpy / torch peers run, comma-separated")
    args = ap.parse_args(argv)
    kernels = instrumented_kernels()
    rec = Recorder()
    cpu_backend.s = types.SimpleNamespace(sample_put_back=rec.kernel(kernels.sample_put_back, kernels.BLOCK_ROWS),
                                          sample_distinct=rec.kernel(kernels.sample_distinct, kernels.BLOCK_ROWS))
    rec.wrap(cpu_backend.CpuBackend, "sample", static=True)
    rec.wrap(engine_mod.Engine, "_prepare")
    rec.wrap(cpu_request.HostRequest, "finish")
    rec.wrap(engine_mod.Engine, "_raise_for")
    now()
    a = time.perf_counter_ns(), now()
    time.sleep(0.3)
    b = time.perf_counter_ns(), now()
    ticks_per_ns = (b[1] - a[1]) / (b[0] - a[0])

    cat = make_catalogue(1_000_000, 1000, n_dense=4, n_ragged=1, seed=0)

    def sampler(put_back=True):
        s = NegativeSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=1, put_back=put_back, device="cpu")
        s.reload(cat.table, progress=False)
        return s

    ours, ours_nr = sampler(), sampler(put_back=False)
    peers, rng, k, default = PerCategoryPeers(cat), np.random.default_rng(2), 10, int(cat.ids[0])
    cases, watched = {"load_index": sampler}, {}
    for batch in (4096, 65536):
        item = positive_batch(cat, batch, rng)[0]
        pos, cats = item[DEDUP_TAG], item[SAMPLE_TAG]
        pos_np, cats_np = pos.values().numpy(), cats.values().numpy()
        key = f"{batch}x{k}"
        cases[f"put_back_{key}"] = watched[f"put_back_{key}"] = lambda p=pos, c=cats: ours.sample_ids(p, k, c)
        cases[f"no_put_back_{key}"] = watched[f"no_put_back_{key}"] = lambda p=pos, c=cats: ours_nr.sample_ids(p, k, c)
        cases[f"batch_wide_{key}"] = lambda p=pos, c=cats: ours.sample_ids(p, k, c,
                                                                          avoid_conflict_with_all_dedup_tags=True)
        if str(batch) in args.peers.split(","):
            cases[f"numpy_choice_{key}"] = lambda p=pos_np, c=cats_np: peers.numpy_choice(p, c, k)
            cases[f"torch_multinomial_{key}"] = lambda p=pos_np, c=cats_np: peers.torch_multinomial(p, c, k)
        if batch == 4096:
            ids = ours.combine_vector_with_sample_counts(pos.values(), k, ours.sample_ids(pos, k, cats))
            rows = ours.engine.backend.rows_or_default(None, ours.engine.state.placed_index, ids.numpy(), 0, False)
            cases["valid_sample_ids"] = lambda i=ids: ours.valid_sample_ids(i, default)
            cases["pack_feature"] = lambda i=ids: ours.pack_feature(i, default)
            cases["numpy_gather"] = lambda r=rows, t=bytes_table(cat): numpy_gather(t, r)
    print(f"cases in each round: {list(cases)}; load average {os.getloadavg()}")
    calls = {name: [] for name in watched}
    for rnd in range(args.rounds + 1):  # round 0 warms up (and compiles the instrumented kernels)
        for name, fn in cases.items():
            if name not in watched:
                fn()
                continue
            rec.marks = {}
            pair = time.perf_counter_ns(), now()
            rec.mark("call>")
            fn()
            rec.mark("call<")
            if rnd:
                calls[name].append(stages(rec.marks, *rec.stamps, lambda t, p=pair: p[0] + (t - p[1]) / ticks_per_ns))
            rec.marks = None
    print(f"load average after: {os.getloadavg()}; TSC {ticks_per_ns:.3f} GHz")
    for name, rows in calls.items():
        print(f"\n{name}: {len(rows)} rounds, us, median [min..max]")
        for stage in rows[0]:
            v = [r[stage] / 1e3 for r in rows]
            print(f"  {stage:48s} {statistics.median(v):9.1f} [{min(v):.1f}..{max(v):.1f}]")
        print("  second thread's start after the loop's, each call (us):",
              [round(r["loop -> second thread starts"] / 1e3) for r in rows])


if __name__ == "__main__":
    main()
