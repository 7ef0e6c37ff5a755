"""What the node server adds to a fused request's own work, measured in one process with
the three ways interleaved (so load from other processes hits all three alike):

* in_process: the engine gathers the features into fresh process memory (NegativeSampler);
* copy_after: the same, then every answer array is copied into a client's shared-memory
  block (the server before it gathered in place);
* in_place: the engine writes its outputs (negatives, valid and combined ids, features)
  straight into the block (``BlockAllocator``) and only the request's counts are copied
  behind them (the server now).

No socket and no client: the end-to-end figures are bench_server.py's. Prints medians and
the paired median overhead over in_process, in ms.

    python bench/bench_server_answer.py [--items 1000000] [--batch-size 4096] [--rounds 40]
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from gpu_negsample import RaggedTensor
from gpu_negsample.backends.protocol import host_empty
from gpu_negsample.backends.select import select_backend
from gpu_negsample.config import SamplerConfig
from gpu_negsample.engine import Engine, RandomStream
from gpu_negsample.server import protocol
from gpu_negsample.server.endpoint import create_block
from gpu_negsample.server.service import AnswerMemory, BlockAllocator, SharedBlock, default_max_answer_bytes
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue, positive_batch

K = 10
BLOCK_BYTES = 64 << 20


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--categories", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args(argv)
    cat = make_catalogue(args.items, args.categories, seed=0)
    engine = Engine(SamplerConfig(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=0, device="cpu"),
                    select_backend("cpu", None))
    engine.reload(cat.table, progress=False)
    batch = positive_batch(cat, args.batch_size, np.random.default_rng(0))[0]
    rows = torch.arange(args.batch_size + 1)
    items, tags = RaggedTensor(batch[DEDUP_TAG].values(), rows), RaggedTensor(batch[SAMPLE_TAG].values(), rows)
    default, stream = int(cat.ids[0]), RandomStream(0)
    fd = create_block(BLOCK_BYTES)
    try:
        block = SharedBlock(os.getpid(), fd, BLOCK_BYTES)
    finally:
        os.close(fd)

    def answer(alloc) -> dict:
        neg, valid, ids, features, counts, _ = engine.fused_sample(items, K, tags, default, True, False, False,
                                                                   stream, alloc)
        out = {"neg": neg, "valid": valid, "ids": ids, "counts": counts}
        protocol.encode_table("f", features, out)
        return out

    def copy_after() -> None:
        out = answer(host_empty)
        block.write(out, protocol.layout(out)[0])

    def in_place() -> None:
        alloc = BlockAllocator(block, AnswerMemory(default_max_answer_bytes()))
        rest = {n: a for n, a in answer(alloc).items() if alloc.offset_of(a) is None}
        block.write(rest, protocol.layout(rest, alloc.used)[0])

    ways = {"in_process": lambda: answer(host_empty), "copy_after": copy_after, "in_place": in_place}
    times = {name: [] for name in ways}
    for fn in ways.values():
        fn()  # warm-up: compile, fault the block in
    for _ in range(args.rounds):
        for name, fn in ways.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    ms = {name: np.asarray(t) * 1e3 for name, t in times.items()}
    result = {"settings": vars(args), "cpus": os.cpu_count(),
              "median_ms": {name: float(np.median(t)) for name, t in ms.items()},
              "overhead_over_in_process_ms": {name: float(np.median(ms[name] - ms["in_process"]))
                                              for name in ("copy_after", "in_place")}}
    block.close()
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
