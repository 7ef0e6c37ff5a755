"""This machine's random-access limit: random 8-byte loads per second over a large array.

Two patterns, each on 1 and 2 threads (numba):

* dependent: a pointer chase through one random cycle (Sattolo's permutation), so each
  load's address is the previous load's value. This is the cost of a chain of cache
  misses: a hash probe then the row it names, an alias slot then its item id.
* independent: loads at addresses from a counter-based generator (splitmix64 of the
  loop index), never from a previous load, so the CPU keeps many misses in flight. This
  is the most any gather of random rows can reach.

The sampler's figures are read against these two: a negative that costs d dependent and
i independent misses cannot go faster than about 1 / (d / dependent + i / independent).

    python bench/bench_memory.py [--mb 100] [--repeats 7] [--out bench/results]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numba as nb
import numpy as np

from report import describe_machine, save

_C1 = np.uint64(0xBF58476D1CE4E5B9)
_C2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def random_cycle(n: int, seed: int = 0) -> np.ndarray:
    """next[i] for one cycle through all n slots (Sattolo), so a chase visits every slot."""
    order = np.random.default_rng(seed).permutation(n)
    nxt = np.empty(n, dtype=np.int64)
    nxt[order[:-1]] = order[1:]
    nxt[order[-1]] = order[0]
    return nxt


@nb.njit(parallel=True, nogil=True, cache=True)
def _chase(nxt, steps, chains):
    """chains independent pointer chases of `steps` loads each, one per thread; returns their end
    slots (so the loads cannot be optimised away)."""
    n = nxt.shape[0]
    ends = np.empty(chains, dtype=np.int64)
    for c in nb.prange(chains):
        p = (c * (n // chains)) % n
        for _ in range(steps):
            p = nxt[p]
        ends[c] = p
    return ends


@nb.njit(parallel=True, nogil=True, cache=True)
def _independent(values, loads, chunks):
    """`loads` loads at splitmix64-scattered addresses, split into chunks (one per thread)."""
    n = np.uint64(values.shape[0])
    per = loads // chunks
    sums = np.zeros(chunks, dtype=np.int64)
    for c in nb.prange(chunks):
        acc = np.int64(0)
        for i in range(c * per, (c + 1) * per):
            z = np.uint64(i) * _GOLDEN
            z = (z ^ (z >> np.uint64(30))) * _C1
            z = (z ^ (z >> np.uint64(27))) * _C2
            z = z ^ (z >> np.uint64(31))
            acc += values[np.int64(z % n)]
        sums[c] = acc
    return sums


def random_access_limit(mb: int = 100, repeats: int = 7, threads=(1, 2), steps: int = 2_000_000) -> dict:
    """Loads per second (medians of interleaved repetitions) of dependent and independent
    random 8-byte loads over an mb-MB array, for each thread count."""
    nxt = random_cycle(mb * 1_000_000 // 8)
    previous = nb.get_num_threads()
    cases = [(kind, t) for t in threads for kind in ("dependent", "independent")]
    times: dict = {case: [] for case in cases}
    try:
        for rep in range(repeats + 1):  # the first round warms up (compiles, faults pages in)
            for kind, t in cases:
                nb.set_num_threads(t)
                t0 = time.perf_counter()
                if kind == "dependent":
                    _chase(nxt, steps, t)
                else:
                    _independent(nxt, steps * t * 4, t)
                if rep:
                    times[(kind, t)].append(time.perf_counter() - t0)
    finally:
        nb.set_num_threads(previous)
    out = {"array_MB": mb, "repeats": repeats}
    for (kind, t), ts in times.items():
        loads = steps * t * (1 if kind == "dependent" else 4)
        rate = loads / statistics.median(ts)
        out[f"{kind}_{t}t_loads_per_s"] = rate
        out[f"{kind}_{t}t_ns_per_load_per_thread"] = t / rate * 1e9
    return out


def print_limit(r: dict) -> None:
    for key, v in r.items():
        if key.endswith("loads_per_s"):
            name = key[: -len("_loads_per_s")]
            print(f"random 8-byte loads over {r['array_MB']} MB, {name}: {v / 1e6:,.1f} M/s "
                  f"({r[name + '_ns_per_load_per_thread']:.1f} ns per load per thread)")


def plot(results, plt):
    r = results["random_access"]
    keys = [k for k in r if k.endswith("loads_per_s")]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar([k[: -len("_loads_per_s")].replace("_", "\n") for k in keys], [r[k] / 1e6 for k in keys])
    ax.set_ylabel("M loads / s")
    ax.set_title(f"random 8-byte loads over {r['array_MB']} MB (median of {r['repeats']})")
    return fig


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = ap.parse_args(argv)
    machine = describe_machine()
    print("machine:", machine)
    r = random_access_limit(args.mb, args.repeats)
    print_limit(r)
    save({"machine": machine, "settings": vars(args), "random_access": r}, args.out, "bench_memory", plot)


if __name__ == "__main__":
    main()
