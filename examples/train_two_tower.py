"""A two-tower retrieval model trained with negatives from the node's sampling server.

    torchrun --nproc_per_node=8 examples/train_two_tower.py [--steps 60] [--items 200000]

Every process of the node is one data-parallel rank (gloo on CPU, NCCL on GPUs). Local
rank 0's LocalRpcDataSampler starts the node's sampling server and loads the item table
(built here synthetically; in a real job read from shared storage, e.g. a Parquet path);
every rank draws its positives, and a Prefetcher fetches each batch's negatives and item
features in one fused request while the model trains on the previous batch. The loss is
a sampled softmax over (positive, k negatives) per row. On several nodes, run the same
command on each (torchrun --nnodes=N ...): each node starts its own server with its own
copy of the table.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gpu_negsample import LocalRpcDataSampler, RaggedTensor, prefetch
from gpu_negsample.synthetic import DEDUP_TAG, SAMPLE_TAG, SKEY, WEIGHT_TAG, make_catalogue

BUCKETS = 1 << 16


class TwoTower(nn.Module):
    def __init__(self, n_users: int, dense_dim: int, dim: int = 32):
        super().__init__()
        self.user = nn.Embedding(n_users, dim)
        self.item = nn.Embedding(BUCKETS, dim)
        self.item_dense = nn.Linear(dense_dim, dim)
        for table in (self.user, self.item):
            nn.init.normal_(table.weight, std=0.05)  # start near uniform scores: loss ~ log(k + 1)

    def forward(self, users, item_ids, item_dense, k: int):
        u = self.user(users)                                                    # (b, d)
        v = self.item(torch.remainder(item_ids, BUCKETS)) + self.item_dense(item_dense)
        v = v.reshape(users.shape[0], k + 1, -1)                                 # positive, then k negatives
        return torch.einsum("bd,bkd->bk", u, v)


def batches(cat, n_users, batch_size, rank, steps):
    """Positives: items by popularity, each with a user whose taste is the item's category."""
    rng = np.random.default_rng(1000 + rank)
    n_cat = int(cat.categories.max())
    one = torch.arange(batch_size + 1)
    for _ in range(steps):
        rows = cat.popular_rows(batch_size, rng)
        users = (cat.categories[rows] - 1) + n_cat * rng.integers(0, n_users // n_cat, batch_size)
        yield (torch.from_numpy(users), RaggedTensor(torch.from_numpy(cat.ids[rows]), one),
               RaggedTensor(torch.from_numpy(cat.categories[rows]), one))


def process_group_and_device(local_rank: int, local_ranks: int) -> tuple[str, torch.device]:
    """The process group's backend and this rank's device. A GPU per rank: NCCL. More ranks than
    GPUs (a one-card machine running several ranks): ranks share the GPUs round robin over
    gloo, since NCCL refuses two ranks on one GPU. No GPU: gloo on the CPU."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus == 0:
        return "gloo", torch.device("cpu")
    if local_ranks > gpus and local_rank == 0:
        print(f"{local_ranks} ranks share {gpus} GPU(s): gloo instead of NCCL", flush=True)
    return ("nccl" if local_ranks <= gpus else "gloo"), torch.device("cuda", local_rank % gpus)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=200_000)
    ap.add_argument("--categories", type=int, default=50)
    ap.add_argument("--users", type=int, default=5_000)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--negatives", type=int, default=8)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)

    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend, device = process_group_and_device(local_rank, int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend)
    rank = dist.get_rank()
    torch.manual_seed(args.seed)

    cat = make_catalogue(args.items, args.categories, n_dense=2, n_ragged=0, strings=True, seed=args.seed)
    sampler = LocalRpcDataSampler(SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY, seed=args.seed)
    if local_rank == 0:
        sampler.reload(cat.table)
    default_id = int(cat.ids[0])
    k = args.negatives

    def with_negatives(batch):
        users, items, cats = batch
        r = sampler.sample(items, k, cats, default_value=default_id)
        dense = torch.cat([r.features["dense_0"].reshape(len(r.ids), -1), r.features["dense_1"]], dim=1)
        return users, r.ids, dense

    dense_dim = 1 + cat.table["dense_1"].shape[1]
    model = TwoTower(args.users, dense_dim).to(device)
    model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    target = torch.zeros(args.batch_size, dtype=torch.int64, device=device)  # column 0 holds the positive
    losses = []
    with prefetch(batches(cat, args.users, args.batch_size, rank, args.steps), with_negatives) as stream:
        for step, (users, ids, dense) in enumerate(stream):
            logits = model(users.to(device), ids.to(device), dense.to(device), k)
            loss = F.cross_entropy(logits, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
                print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    first, last = torch.tensor(losses[:5]).mean(), torch.tensor(losses[-5:]).mean()
    summary = torch.stack([first, last]).to(device)
    dist.all_reduce(summary)
    summary /= dist.get_world_size()
    if rank == 0:
        print(f"mean loss over ranks: first steps {summary[0]:.4f}, last steps {summary[1]:.4f} "
              f"({dist.get_world_size()} ranks, {args.negatives} negatives per positive)", flush=True)
    sampler.close()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
