"""The node server against what a broken or hostile client puts on the wire: every bad input
is an error reply naming the cause, never a crash or a hang of the node's server."""
import itertools
import os

import numpy as np
import pytest

from gpu_negsample.columns import DENSE, RAGGED, STRING, Column
from gpu_negsample.server import protocol as p
from server_harness import raw_client, server_on_thread
from server_tables import catalogue

_jobs = itertools.count()


@pytest.fixture
def job():
    return f"w{os.getpid()}-{next(_jobs)}"


def columns_of(cat) -> dict:
    from gpu_negsample.columns import read_table_input

    return read_table_input(cat.table)


def reload_frames_args(columns: dict) -> tuple[dict, dict]:
    arrays = {}
    return {"columns": p.encode_columns(columns, arrays)}, arrays


BAD_OFFSETS = [  # (what, offsets of a 4-value column of 3 rows, what the error says)
    ("run past the values", [0, 1, 2, 400], "must end at the number of values \\(4\\); row 2 ends at 400"),
    ("decrease", [0, 3, 1, 4], "decrease at row 1: 3 -> 1"),
    ("do not start at 0", [2, 3, 4, 4], "must start at 0; row 0 starts at 2"),
]


@pytest.mark.parametrize("kind", [RAGGED, STRING])
@pytest.mark.parametrize("what, offsets, message", BAD_OFFSETS)
def test_columns_with_bad_offsets_are_refused_when_decoded(kind, what, offsets, message):
    values = np.arange(4, dtype=np.uint8 if kind == STRING else np.int64)
    items, arrays = reload_frames_args({"c": Column("c", kind, values, np.array(offsets, np.int64))})
    with pytest.raises(p.TableError, match=f"column 'c': offsets {message}"):
        p.decode_columns(items["columns"], arrays)


@pytest.mark.parametrize("column, message", [
    (Column("c", RAGGED, np.arange(4), np.array([0, 4], np.int32)), "offsets must be a non-empty 1-D int64"),
    (Column("c", STRING, np.arange(4, dtype=np.int64), np.array([0, 4], np.int64)), "string bytes must be uint8"),
    (Column("c", DENSE, np.array([b"ab"]), None), "values must be a numeric numpy array"),
    (Column("c", "tensor", np.arange(4), None), "unknown kind 'tensor'"),
    (Column("c", RAGGED, np.arange(4), np.array([0, 4], np.int64), np.ones(3)), "weight length 3 != values 4"),
])
def test_columns_with_bad_arrays_are_refused_when_decoded(column, message):
    items, arrays = reload_frames_args({"c": column})
    with pytest.raises(p.TableError, match=message):
        p.decode_columns(items["columns"], arrays)


def test_a_reload_with_bad_category_offsets_is_a_table_error_and_the_server_serves_on(job):
    """Before: the server accepted the table and died of SIGSEGV at the next pack_feature."""
    cat = catalogue()
    columns = columns_of(cat)
    good_args, good_arrays = reload_frames_args(columns)
    bad = columns["category"]
    n = bad.offsets.shape[0] - 1
    columns["category"] = Column("category", RAGGED, bad.values, np.arange(n + 1, dtype=np.int64) * 1000)
    bad_args, bad_arrays = reload_frames_args(columns)
    with server_on_thread(job) as server, raw_client(server) as c:
        assert c.ask("reload", good_args, good_arrays)["ok"]
        head = c.ask("reload", bad_args, bad_arrays)
        assert head["error"] == "TableError" and "column 'category': offsets must end at" in head["message"]
        arrays = {}
        head = c.ask("pack_feature", {"ids": p.encode("ids", cat.ids[:5], arrays), "default": -1}, arrays)
        assert head["ok"], head
