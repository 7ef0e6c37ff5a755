"""Datasets the DataLoader tests hand to workers (importable by spawned workers)."""
import torch
from torch.utils.data import Dataset

from server_tables import catalogue, positives


class NegativesDataset(Dataset):
    """Item i: the negatives of call i's positives, drawn in whichever worker loads it."""

    def __init__(self, sampler, n: int, make_in_worker=None):
        self.sampler, self.n, self.make_in_worker = sampler, n, make_in_worker

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if self.sampler is None:  # made inside the worker, as under torchrun
            self.sampler = self.make_in_worker()
            self.sampler.reload(catalogue().table)
        info = torch.utils.data.get_worker_info()
        pos, count, tags = positives(catalogue(), i % 2)  # the same positives in every worker
        neg = self.sampler.sample_ids(pos, count, tags)
        return {"worker": info.id, "pid": __import__("os").getpid(), "positives": pos.values(), "negatives": neg}


def make_rank_0_sampler():
    from gpu_negsample import LocalRpcDataSampler

    return LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", seed=1)


def seed_in_worker(sampler):
    """The stream seed a spawned process's copy of the sampler reports (it attaches for it)."""
    return sampler.seed
