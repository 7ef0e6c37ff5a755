"""A realistic synthetic catalogue: the embedded default of the demo and the benchmarks.

Shape (as real catalogues): P(category c) proportional to 1/c, popularity weight N / rank
over a random rank (Zipf), unique scrambled int64 ids, and dense, ragged and string
feature columns. Positives are drawn by popularity, as a training stream sees them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .ragged import RaggedTensor

SAMPLE_TAG, DEDUP_TAG, WEIGHT_TAG, SKEY = "category", "item_id", "weight", "skey"


def scrambled_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct int64 ids spread over the whole int64 range (like hashed ids)."""
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    sign = rng.integers(0, 2, size=n, dtype=np.int64)
    return np.where(sign == 1, -ids - 1, ids)


def _ragged(rng, n, max_len, dtype):
    lengths = rng.integers(0, max_len + 1, size=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    values = rng.integers(0, 1 << 30, size=total).astype(dtype) if np.dtype(dtype).kind == "i" \
        else rng.random(total).astype(dtype)
    return RaggedTensor(torch.from_numpy(values), torch.from_numpy(offsets))


@dataclass
class Catalogue:
    table: dict             # RecIS-style dict of columns
    ids: np.ndarray
    categories: np.ndarray  # one category per item
    weights: np.ndarray

    def popular_rows(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """Table rows drawn with probability proportional to weight (with replacement)."""
        if not hasattr(self, "_cdf"):
            self._cdf = np.cumsum(self.weights, dtype=np.float64)
        return np.searchsorted(self._cdf, rng.random(size) * self._cdf[-1], side="right")


def make_catalogue(n_items: int = 1_000_000, n_categories: int = 1000, n_dense: int = 4, n_ragged: int = 4,
                   strings: bool = True, seed: int = 0) -> Catalogue:
    """The synthetic table as a RecIS dict (torch tensors, RaggedTensors, string lists)."""
    rng = np.random.default_rng(seed)
    ids = scrambled_ids(n_items, rng)
    p = 1.0 / np.arange(1, n_categories + 1)
    categories = rng.choice(n_categories, size=n_items, p=p / p.sum()).astype(np.int64) + 1
    weights = (n_items / (1.0 + rng.permutation(n_items))).astype(np.float32)
    table = {
        SAMPLE_TAG: RaggedTensor(torch.from_numpy(categories), torch.arange(n_items + 1, dtype=torch.int64)),
        DEDUP_TAG: RaggedTensor(torch.from_numpy(ids), torch.arange(n_items + 1, dtype=torch.int64)),
        WEIGHT_TAG: torch.from_numpy(weights),
    }
    dims = (1, 4, 8, 16)
    for k in range(n_dense):
        table[f"dense_{k}"] = torch.from_numpy(rng.random((n_items, dims[k % 4]), dtype=np.float32).squeeze(1)
                                               if dims[k % 4] == 1 else rng.random((n_items, dims[k % 4]), dtype=np.float32))
    for k in range(n_ragged):
        table[f"ragged_{k}"] = _ragged(rng, n_items, 8, np.int64 if k % 2 == 0 else np.float32)
    if strings:
        table[SKEY] = [np.char.add("sk", (np.arange(n_items) % 100_003).astype("U"))]
    return Catalogue(table, ids, categories, weights)


def positive_batch(cat: Catalogue, batch_size: int, rng: np.random.Generator) -> list[dict]:
    """A RecIS positive batch (list with one dict) of items drawn by popularity."""
    rows = cat.popular_rows(batch_size, rng)
    one = torch.arange(batch_size + 1, dtype=torch.int64)
    return [{
        DEDUP_TAG: RaggedTensor(torch.from_numpy(cat.ids[rows]), one),
        SAMPLE_TAG: RaggedTensor(torch.from_numpy(cat.categories[rows]), one),
        "user_age": torch.from_numpy(rng.integers(18, 80, size=batch_size).astype(np.float32)),
    }]
