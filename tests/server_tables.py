"""The small negative table and positives the server tests share."""
import numpy as np

from gpu_negsample.synthetic import make_catalogue


def catalogue(n_items=3000, n_categories=12, seed=5):
    return make_catalogue(n_items, n_categories, n_dense=1, n_ragged=1, seed=seed)


def positives(cat, call: int, n: int = 128):
    rows = np.random.default_rng(call).integers(0, cat.ids.shape[0], n)
    from gpu_negsample import RaggedTensor
    import torch

    one = torch.arange(n + 1)
    return (RaggedTensor(torch.from_numpy(cat.ids[rows]), one), 6,
            RaggedTensor(torch.from_numpy(cat.categories[rows]), one))
