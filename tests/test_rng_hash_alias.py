import random

import numba as nb
import numpy as np
import pytest

from gpu_negsample.alias import build_alias
from gpu_negsample.backends.cpu.lookup import lookup
from gpu_negsample.hashing import EMPTY_KEY, build_hash_table, capacity_for
from gpu_negsample.index import quantize_weights, segments_of
from gpu_negsample.rng import mul32hi, mulhi64, philox_block, philox_lanes

# Random123's published known-answer vectors for Philox4x32-10.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers(ctr, key, want):
    out = philox_block(np.array([ctr], dtype=np.uint64), np.uint64(key[0]), np.uint64(key[1]))
    assert tuple(int(x) for x in out[0]) == want


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_lanes_known_answers(ctr, key, want):
    words = np.zeros((4, 3), dtype=np.uint32)
    c1, c2 = np.full(3, ctr[1], dtype=np.uint32), np.full(3, ctr[2], dtype=np.uint32)
    philox_lanes(np.uint64(ctr[0]), c1, c2, np.uint64(ctr[3]), np.uint64(key[0]), np.uint64(key[1]), words, 3)
    assert all(tuple(int(x) for x in words[:, t]) == want for t in range(3))


def test_philox_lanes_match_the_scalar_function_on_random_counters():
    """The vectorised pass the sampling kernels use gives the scalar function's words for
    any counters (n not a multiple of the vector width, so the remainder loop runs too),
    and reduces the scalar counters and the key modulo 2**32 as the scalar path does."""
    rng = np.random.default_rng(5)
    n = 1003
    c1, c2 = (rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) for _ in range(2))
    c0, c3 = np.uint64(2**40 + 123), np.uint64(7)
    k0, k1 = np.uint64(0x1_DEADBEEF), np.uint64(0x2_CAFEF00D)
    words = np.zeros((4, n + 5), dtype=np.uint32)
    philox_lanes(c0, c1, c2, c3, k0, k1, words, n)
    mask = np.uint64(0xFFFFFFFF)
    ctr = np.stack([np.full(n, c0 & mask), c1.astype(np.uint64), c2.astype(np.uint64), np.full(n, c3)], axis=1)
    assert np.array_equal(words[:, :n], philox_block(ctr, k0 & mask, k1 & mask).T)
    assert not words[:, n:].any()  # nothing written past n


@nb.njit
def _mulhi(a, b):
    return mulhi64(a, b)


@nb.njit
def _mul32hi(r, t):
    return mul32hi(r, t)


def test_integer_helpers_match_python_big_ints():
    rnd = random.Random(3)
    for _ in range(2000):
        a, b = rnd.getrandbits(64), rnd.getrandbits(64)
        assert int(_mulhi(np.uint64(a), np.uint64(b))) == (a * b) >> 64
        r, t = rnd.getrandbits(32), rnd.getrandbits(63)
        assert int(_mul32hi(np.uint64(r), np.uint64(t))) == (r * t) >> 32


def test_hash_table_finds_every_key_and_nothing_else():
    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(-(2**63) + 1, 2**63 - 1, size=5000, dtype=np.int64))
    rng.shuffle(keys)
    slots, dup = build_hash_table(keys)
    assert dup is None
    assert slots.shape[0] == capacity_for(keys.size) >= 2 * keys.size
    assert np.array_equal(lookup(slots, keys), np.arange(keys.size))
    absent = np.setdiff1d(rng.integers(-(2**62), 2**62, size=3000, dtype=np.int64), keys)
    assert (lookup(slots, absent) == -1).all()
    assert (slots[:, 0] == EMPTY_KEY).sum() == slots.shape[0] - keys.size


def test_hash_table_built_on_one_thread_has_the_same_bytes():
    """The index builds its id hash on a helper thread with all_threads=False (no parallel
    region); the slots must be the bytes the parallel clear gives."""
    from gpu_negsample.hashing import _PARALLEL_CLEAR_SLOTS

    keys = np.random.default_rng(1).permutation(np.arange(_PARALLEL_CLEAR_SLOTS, dtype=np.int64) * 7 - 5)
    parallel, dup_parallel = build_hash_table(keys)
    here, dup_here = build_hash_table(keys, all_threads=False)
    assert dup_parallel is None and dup_here is None
    assert parallel.tobytes() == here.tobytes()


def test_id_hash_thread_raises_on_the_callers_thread():
    from gpu_negsample.index import _IdHash

    with pytest.raises(ValueError):
        _IdHash(np.array(["not an id"])).result()


def test_hash_table_reports_first_duplicate():
    _, dup = build_hash_table(np.array([4, 9, 7, 9, 4], dtype=np.int64))
    assert dup == (1, 3)


def implied_probabilities(table: np.ndarray) -> np.ndarray:
    """Exact probability of each item under an alias table's integer thresholds."""
    n = table.shape[0]
    keep = table[:, 0].astype(np.float64) / 2**32
    keep[table[:, 1] == np.arange(n)] = 1.0  # self-alias slots always yield themselves
    p = keep / n
    np.add.at(p, table[:, 1].astype(np.int64), (1 - keep) / n)
    return p


@pytest.mark.parametrize("weights", [
    [1, 1, 1, 1],
    [5, 0, 3, 0, 2],
    [10**12, 1, 1, 3],
    list(range(1, 200)),
    [0, 0, 7],
])
def test_alias_table_reproduces_weights(weights):
    w = np.asarray(weights, dtype=np.uint64)
    table = np.empty((w.size, 2), dtype=np.uint32)
    build_alias(w, table)
    p = implied_probabilities(table)
    assert np.allclose(p, w / w.sum(), atol=w.size * 2.0**-31)
    assert (p[w == 0] == 0).all()


@pytest.mark.parametrize("values", [
    np.random.default_rng(0).integers(-5, 1000, 100_000),           # a small range: the presence table
    np.random.default_rng(1).integers(-2**62, 2**62, 1000),         # a wide range: np.unique
    np.array([-2**63 + 1, 2**63 - 1]), np.array([7]), np.array([3, 3, 1]), np.zeros(0),
])
def test_segments_of_is_unique_with_inverse(values):
    values = values.astype(np.int64)
    distinct, segment = segments_of(values)
    expected, inverse = np.unique(values, return_inverse=True)
    np.testing.assert_array_equal(distinct, expected)
    np.testing.assert_array_equal(segment, inverse.reshape(-1))
    assert distinct.dtype == segment.dtype == np.int64


@pytest.mark.parametrize("weights", [
    [1.0, 2.0, 3.0],
    [5e-324, 1e-320, 3e-310, 0.0],      # subnormal: scaled up past 2**1023
    [1e-300, 7e-301, 0.0, 1e-310],
    [1e300, 1.0, 5e-324, 3e299],         # huge: scaled down, small ones floored to 0 -> 1
    np.random.default_rng(0).random(1000) ** 8,
])
def test_quantized_weights_are_ldexp_floored(weights):
    """Integer weights are floor(ldexp(w, scale)) exactly, a positive one never below 1, and
    sum to at most 2**62 (plus one per weight raised to 1)."""
    w = np.asarray(weights, dtype=np.float64)
    ints, scale = quantize_weights(w)
    want = np.floor(np.ldexp(w, scale)).astype(np.uint64)
    want[(want == 0) & (w > 0)] = 1
    np.testing.assert_array_equal(ints, want)
    assert int(ints.astype(object).sum()) <= 2**62 + w.size
    assert int(ints.max()) >= 2**61 // w.size  # the scale used the room: the heaviest is not tiny
