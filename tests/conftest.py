import numpy as np
import pytest
import torch

from gpu_negsample import NegativeSampler, RaggedTensor

# Significance level of every chi-square test in the suite: with the fixed seeds the tests
# are deterministic; a correct sampler fails one of them with probability 1e-4 per seed.
ALPHA = 1e-4


def one_per_row(values) -> RaggedTensor:
    values = torch.as_tensor(np.asarray(values), dtype=torch.int64)
    return RaggedTensor(values, torch.arange(values.numel() + 1, dtype=torch.int64))


def small_table(ids, categories, weights, extra=None):
    """A RecIS-style dict table with single-valued categories unless categories is a RaggedTensor."""
    table = {
        "item": one_per_row(ids),
        "cat": categories if isinstance(categories, RaggedTensor) else one_per_row(categories),
        "w": weights if isinstance(weights, RaggedTensor) else torch.as_tensor(np.asarray(weights, dtype=np.float32)),
        "skey": [np.array([f"k{i}" for i in ids])],
    }
    table.update(extra or {})
    return table


def make_sampler(table=None, **kw) -> NegativeSampler:
    kw.setdefault("seed", 1234)
    kw.setdefault("device", "cpu")  # the CUDA backend is compared with this one in test_cuda_parity.py
    s = NegativeSampler("cat", "item", "w", "skey", **kw)
    if table is not None:
        s.reload(table)
    return s


@pytest.fixture
def catalogue():
    """40 items, 4 categories, skewed weights (category 1's item 10 is dominant)."""
    rng = np.random.default_rng(7)
    ids = np.arange(10, 50, dtype=np.int64)
    cats = np.repeat([1, 2, 3, 4], 10)
    weights = rng.integers(1, 20, size=40).astype(np.float64)
    weights[0] = 500.0
    weights[25] = 0.0
    return ids, cats, weights
