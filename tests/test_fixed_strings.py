"""numpy fixed-width string columns are read without Arrow: the same bytes and offsets as
Arrow's conversion of the same values, and a lone surrogate is refused by row."""
import numpy as np
import pyarrow as pa
import pytest

from gpu_negsample import TableError
from gpu_negsample.columns import strings_from_sequence


def arrow_bytes(values):
    arr = pa.array(list(values)).cast(pa.large_binary())
    _, offsets, data = arr.buffers()
    n = len(arr)
    return np.frombuffer(data, np.uint8)[: np.frombuffer(offsets, np.int64)[n]], np.frombuffer(offsets, np.int64)[: n + 1]


@pytest.mark.parametrize("values", [
    np.array(["sk1", "", "a\u00e9\u20ac\U0001F600z", "trailing\x00", "x" * 40, "\x00inner"]),  # 1-4 byte UTF-8
    np.array([b"ab", b"", b"c\x00d", b"\xff\xfe"], dtype="S4"),
    np.array([], dtype="U3"),
    np.array(["", ""], dtype="U1"),
])
def test_fixed_width_arrays_match_arrow(values):
    col = strings_from_sequence("skey", values)
    data, offsets = arrow_bytes(values.tolist())
    np.testing.assert_array_equal(col.offsets, offsets)
    np.testing.assert_array_equal(col.values, data)


def test_random_unicode_matches_arrow():
    rng = np.random.default_rng(0)
    points = np.concatenate([np.arange(1, 0xD800), np.arange(0xE000, 0x110000)])
    values = np.array(["".join(map(chr, rng.choice(points, rng.integers(0, 9)))) for _ in range(2000)])
    col = strings_from_sequence("skey", values)
    data, offsets = arrow_bytes(values.tolist())
    np.testing.assert_array_equal(col.offsets, offsets)
    np.testing.assert_array_equal(col.values, data)


def test_lone_surrogate_is_refused_by_row():
    with pytest.raises(TableError, match="column 'skey': row 2 holds a lone surrogate"):
        strings_from_sequence("skey", np.array(["a", "b", "c\ud800", "\udfff"]))


def test_many_padded_rows_with_some_non_ascii_match_arrow():
    """Rows that fit their chunk's staging (the one-read path), multi-byte ones among them."""
    rng = np.random.default_rng(1)
    values = np.array([f"k{i}" + ("\u00e9\u20ac\U0001F600" if i % 97 == 0 else "") for i in rng.permutation(5000)],
                      dtype="U24")
    col = strings_from_sequence("skey", values)
    data, offsets = arrow_bytes(values.tolist())
    np.testing.assert_array_equal(col.offsets, offsets)
    np.testing.assert_array_equal(col.values, data)


def test_first_surrogate_is_found_when_a_chunk_stops_before_it():
    """Row 0 outgrows its chunk's staging, so that chunk never reaches row 1; the error still
    names row 1, not the later row 20."""
    values = np.array(["\U0001F600\U0001F600", "\ud800"] + ["ok"] * 18 + ["\udfff"] + ["ok"] * 11)
    with pytest.raises(TableError, match="row 1 holds a lone surrogate"):
        strings_from_sequence("skey", values)
