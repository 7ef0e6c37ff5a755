"""The numba kernels' software prefetch: compiles for every array the sampling kernels
prefetch (several dtypes and ranks in one function) and changes no value."""
import numba as nb
import numpy as np

from gpu_negsample.memory_hints import prefetch


@nb.njit
def _prefetch_then_sum(ids, weights, alias, far):
    total = 0
    for i in range(ids.shape[0]):
        prefetch(ids, i)
        prefetch(weights, i)
        prefetch(alias, i)
        prefetch(ids, far)  # out of range: a prefetch never faults
        total += ids[i] + np.int64(weights[i]) + np.int64(alias[i, 1])
    return total


def test_prefetch_mixed_arrays_changes_nothing():
    ids = np.arange(100, dtype=np.int64)
    weights = np.arange(100, dtype=np.uint64) * np.uint64(3)
    alias = np.stack([np.zeros(100, np.uint32), np.arange(100, dtype=np.uint32)], axis=1)
    assert _prefetch_then_sum(ids, weights, alias, 1 << 40) == ids.sum() + 3 * ids.sum() + ids.sum()
