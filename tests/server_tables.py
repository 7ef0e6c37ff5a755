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


def assert_same_features(got: dict, want: dict) -> None:
    """Feature tables equal column by column (tensors, byte-string arrays, RaggedTensors)."""
    import torch

    for name, value in want.items():
        other = got[name]
        if isinstance(value, torch.Tensor):
            assert torch.equal(other, value), name
        elif isinstance(value, np.ndarray):
            assert np.array_equal(other, value), name
        else:
            assert other.to_list() == value.to_list(), name
