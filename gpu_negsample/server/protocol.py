"""Wire format between LocalRpcDataSampler and the node server: a JSON header frame plus one
raw frame (or one shared-memory range) per array. Nothing received is unpickled: arrays
are rebuilt from (dtype, shape) after checking the dtype is plain numbers or bytes and the
sizes agree; the header is JSON. Values: tensors and numpy arrays become arrays,
RaggedTensors become their values / offsets / weight arrays, feature tables and table
columns are lists of those, everything else must be JSON (ints, floats, bools, strings)."""
from __future__ import annotations

import json

import numpy as np
import torch

from ..columns import Column, check_column
from ..errors import RequestError, TableError
from ..ragged import RaggedTensor

ALLOWED_KINDS = "biufS"  # bool, signed, unsigned, float, fixed-width bytes
ALIGN = 64


def _check_meta(meta: dict) -> tuple[np.dtype, tuple]:
    dtype = np.dtype(meta["dtype"])
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject:
        raise RequestError(f"array {meta.get('name')!r}: dtype {dtype} is not allowed on the wire")
    shape = tuple(int(d) for d in meta["shape"])
    if any(d < 0 for d in shape):
        raise RequestError(f"array {meta.get('name')!r}: negative shape {shape}")
    return dtype, shape


def host(a) -> np.ndarray:
    """A contiguous numpy array of a numpy array, a torch tensor (any device) or a CuPy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    elif not isinstance(a, np.ndarray) and hasattr(a, "get"):  # a CuPy array
        a = a.get()
    return np.ascontiguousarray(a)


def on_gpu(a) -> bool:
    return (isinstance(a, torch.Tensor) and a.is_cuda) or hasattr(a, "__cuda_array_interface__")


def dtype_of(a) -> np.dtype:
    return torch.empty(0, dtype=a.dtype).numpy().dtype if isinstance(a, torch.Tensor) else np.dtype(a.dtype)


def pack(header: dict, arrays: dict) -> list:
    """Frames of a message: the header (with the arrays' dtypes and shapes), then each array."""
    arrays = {name: host(a) for name, a in arrays.items()}
    meta = [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()]
    return [json.dumps(dict(header, arrays=meta)).encode(), *arrays.values()]


def unpack(frames: list, max_bytes: int) -> tuple[dict, dict]:
    """(header, arrays) of received frames (bytes or zmq frames, each array copied once into
    writable memory); RequestError when they do not add up or exceed max_bytes."""
    total = sum(len(f) for f in frames)
    if total > max_bytes:
        raise RequestError(f"request of {total:,} bytes exceeds the server's limit of {max_bytes:,} bytes "
                           "(max_request_bytes); reload big tables from a Parquet path instead")
    header = json.loads(bytes(frames[0]))
    metas = header.pop("arrays", [])
    if len(metas) != len(frames) - 1:
        raise RequestError(f"message announces {len(metas)} arrays but carries {len(frames) - 1}")
    arrays = {}
    for meta, frame in zip(metas, frames[1:]):
        dtype, shape = _check_meta(meta)
        if int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(frame):
            raise RequestError(f"array {meta['name']!r}: {len(frame)} bytes do not make {dtype} {shape}")
        arrays[meta["name"]] = np.frombuffer(bytearray(frame), dtype=dtype).reshape(shape)
    return header, arrays


def layout(arrays: dict) -> tuple[list, int]:
    """Placement of arrays in one result block: (metas with offsets, bytes needed)."""
    metas, offset = [], 0
    for name, a in arrays.items():
        dtype = dtype_of(a)
        nbytes = int(np.prod(a.shape, dtype=np.int64)) * dtype.itemsize
        metas.append({"name": name, "dtype": dtype.str, "shape": list(a.shape), "offset": offset})
        offset += (nbytes + ALIGN - 1) // ALIGN * ALIGN
    return metas, offset


def write_block(block: memoryview, arrays: dict, metas: list) -> None:
    for meta, a in zip(metas, arrays.values()):
        a = host(a)
        view = np.frombuffer(block, dtype=a.dtype, count=a.size, offset=meta["offset"])
        view[...] = a.reshape(-1)


def read_block(block, metas: list) -> dict:
    """Arrays that are views of a shared-memory block (no copy)."""
    out = {}
    for meta in metas:
        dtype, shape = _check_meta(meta)
        count = int(np.prod(shape, dtype=np.int64))
        out[meta["name"]] = np.frombuffer(block, dtype=dtype, count=count, offset=int(meta["offset"])).reshape(shape)
    return out


# ---- values <-> (JSON args, arrays) -------------------------------------------------------
def encode(name: str, value, arrays: dict):
    """The JSON description of value; its arrays go into `arrays` (as they are: host copies are
    made when the message is sent) under names starting with name."""
    if isinstance(value, RaggedTensor):
        arrays[f"{name}.values"] = value.values()
        arrays[f"{name}.offsets"] = value.offsets()[0]
        if value.weight() is not None:
            arrays[f"{name}.weight"] = value.weight()
        return {"ragged": name, "weight": value.weight() is not None}
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arrays[name] = value
        return {"array": name, "numpy": isinstance(value, np.ndarray)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    raise RequestError(f"{name}: a {type(value).__name__} cannot be sent to the sampling server; "
                       "give tensors, RaggedTensors, numpy arrays or numbers")


def tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(a)


def decode(desc, arrays: dict):
    """The value `encode` described (numpy arrays become torch tensors unless they were numpy;
    tensors, e.g. views of a CUDA result block, stay as they are)."""
    if isinstance(desc, dict) and "ragged" in desc:
        name = desc["ragged"]
        weight = arrays[f"{name}.weight"] if desc["weight"] else None
        return RaggedTensor(tensor(arrays[f"{name}.values"]), tensor(arrays[f"{name}.offsets"]),
                            None if weight is None else tensor(weight))
    if isinstance(desc, dict) and "array" in desc:
        a = arrays[desc["array"]]
        return a if isinstance(a, np.ndarray) and (desc["numpy"] or a.dtype.kind == "S") else tensor(a)
    return desc


def encode_table(prefix: str, table: dict, arrays: dict) -> list:
    """A feature table (name -> tensor / RaggedTensor / bytes array) as a list of (name, desc)."""
    return [[name, encode(f"{prefix}{k}", value, arrays)] for k, (name, value) in enumerate(table.items())]


def decode_table(items: list, arrays: dict) -> dict:
    return {name: decode(desc, arrays) for name, desc in items}


def encode_columns(columns: dict, arrays: dict) -> list:
    """Read table columns (reload input) as a list of descriptions."""
    out = []
    for k, col in enumerate(columns.values()):
        for field in ("values", "offsets", "weight"):
            if getattr(col, field) is not None:
                arrays[f"c{k}.{field}"] = getattr(col, field)
        out.append({"name": col.name, "kind": col.kind, "key": f"c{k}",
                    "fields": [f for f in ("values", "offsets", "weight") if getattr(col, f) is not None]})
    return out


def decode_columns(items, arrays: dict) -> dict:
    """Table columns a reload sent (``encode_columns``), checked as strictly as the in-process
    reader checks its own (``check_column``): TableError naming the column otherwise."""
    if not isinstance(items, list) or not items:
        raise TableError("reload: the request carries no columns")
    columns = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("fields"), list):
            raise RequestError(f"reload: malformed column description {str(item)[:200]}")
        name, fields = item.get("name"), item["fields"]
        if any(f not in ("values", "offsets", "weight") for f in fields) or "values" not in fields:
            raise TableError(f"column {name!r}: fields {fields} must be values plus optional offsets and weight")
        missing = [f for f in fields if f"{item.get('key')}.{f}" not in arrays]
        if missing:
            raise RequestError(f"column {name!r}: the request announces {missing} but carries no such arrays")
        parts = {f: arrays[f"{item['key']}.{f}"] for f in fields}
        col = Column(name, item.get("kind"), parts["values"], parts.get("offsets"), parts.get("weight"))
        check_column(col)
        if name in columns:
            raise TableError(f"column {name!r} is given twice")
        columns[name] = col
    return columns
