"""Wire format between LocalRpcDataSampler and the node server. A request is one frame (its
sequence number, a JSON header, then its arrays, or the places of its arrays in the client's
result block: see ``pack_request``, ``place_arrays``, ``copy_placed``); a reply is a JSON
header frame plus one raw frame (or one shared-memory range) per array. Nothing received is
unpickled: arrays are rebuilt from (dtype, shape) after checking the dtype is plain numbers
or bytes in this machine's byte order and the sizes agree. Values: tensors and numpy arrays
become arrays, RaggedTensors become their values / offsets / weight arrays, feature tables
and table columns are lists of those, everything else must be JSON (ints, floats, bools,
strings)."""
from __future__ import annotations

import json
import math
import struct

import numpy as np
import torch

from ..columns import Column, check_column
from ..errors import RequestError, TableError
from ..ragged import RaggedTensor
from ..request import listed_array

ALLOWED_KINDS = "biufS"  # bool, signed, unsigned, float, fixed-width bytes
# The most arrays one request may carry: each costs the server's loop a few microseconds to
# check before any is used, so a frame of a million empty ones would hold it for seconds. A
# reload sends at most three per column.
MAX_REQUEST_ARRAYS = 4096
ALIGN = 64


_WIRE_DTYPES: dict = {}  # dtype string -> its checked np.dtype (a reply describes ~20 arrays of a few dtypes)


def _wire_dtype(name, text) -> np.dtype:
    """The dtype an array description names, checked: plain numbers or bytes in this machine's
    byte order. Strings already checked are looked up, not parsed again."""
    dtype = _WIRE_DTYPES.get(text) if isinstance(text, str) else None
    if dtype is not None:
        return dtype
    try:
        dtype = np.dtype(text)
    except (TypeError, ValueError):
        raise RequestError(f"array {name!r}: {text!r} is not a dtype") from None
    if dtype.kind not in ALLOWED_KINDS or dtype.hasobject or dtype.itemsize == 0 or dtype.fields is not None \
            or dtype.subdtype is not None:
        raise RequestError(f"array {name!r}: dtype {dtype} is not allowed on the wire (numbers, bools or bytes)")
    if not dtype.isnative:
        raise RequestError(f"array {name!r}: dtype {dtype.str} is not in this machine's byte order; "
                           "convert it with a.astype(a.dtype.newbyteorder('='))")
    if isinstance(text, str) and len(_WIRE_DTYPES) < 256:  # bounded: a peer may name many byte widths
        _WIRE_DTYPES[text] = dtype
    return dtype


def _check_meta(meta) -> tuple[np.dtype, tuple]:
    """The dtype and shape of an array's description, checked: plain numbers or bytes in this
    machine's byte order, a shape of non-negative ints."""
    if not isinstance(meta, dict):
        raise RequestError(f"array description must be an object; got {str(meta)[:100]}")
    return _dtype_and_shape(meta.get("name"), meta.get("dtype"), meta.get("shape"))


def _dtype_and_shape(name, dtype, shape) -> tuple[np.dtype, tuple]:
    """An array's dtype and shape as received, checked (``_check_meta``, ``placed_range``)."""
    dtype = _wire_dtype(name, dtype)
    if not isinstance(shape, list) or not all(type(d) is int and 0 <= d < 2**62 for d in shape) or len(shape) > 8:
        raise RequestError(f"array {name!r}: shape {str(shape)[:100]} must be a list of at most 8 non-negative ints")
    if math.prod(shape) * dtype.itemsize >= 2**62:
        raise RequestError(f"array {name!r}: shape {shape} is too big")
    return dtype, tuple(shape)


def host(a) -> np.ndarray:
    """A contiguous numpy array in this machine's byte order of a numpy array, a torch tensor
    (any device) or a CuPy array."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().numpy()
    elif not isinstance(a, np.ndarray) and hasattr(a, "get"):  # a CuPy array
        a = a.get()
    a = np.ascontiguousarray(a)
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def on_gpu(a) -> bool:
    return (isinstance(a, torch.Tensor) and a.is_cuda) or hasattr(a, "__cuda_array_interface__")


_NUMPY_DTYPES: dict = {}  # torch dtype -> numpy dtype, found once each (every reply describes ~20 arrays)


def dtype_of(a) -> np.dtype:
    if not isinstance(a, torch.Tensor):
        return np.dtype(a.dtype)
    dtype = _NUMPY_DTYPES.get(a.dtype)
    if dtype is None:
        dtype = _NUMPY_DTYPES[a.dtype] = torch.empty(0, dtype=a.dtype).numpy().dtype
    return dtype


def pack(header: dict, arrays: dict) -> list:
    """Frames of a reply: the header (with the arrays' dtypes and shapes), then each array."""
    arrays = {name: host(a) for name, a in arrays.items()}
    return [json.dumps(dict(header, arrays=_metas(arrays))).encode(), *arrays.values()]


def unpack(frames: list, max_bytes: int) -> tuple[dict, dict]:
    """(header, arrays) of a reply's frames (bytes or zmq frames, each array copied once into
    writable memory); RequestError when they do not add up or exceed max_bytes."""
    total = sum(memoryview(f).nbytes for f in frames)
    if total > max_bytes:
        raise RequestError(f"message of {total:,} bytes exceeds the limit of {max_bytes:,} bytes")
    header = reply_header(frames[0])
    return header, reply_arrays(header, frames)


def reply_header(frame) -> dict:
    """The JSON header of a reply (its first frame: bytes or a zmq frame), checked to be an object."""
    return _header(bytes(memoryview(frame)))


def reply_arrays(header: dict, frames: list) -> dict:
    """The arrays a reply carries in its frames after the header (each copied once into writable
    memory), as `header` (``reply_header``) announces them; RequestError when they do not add up."""
    metas = header.pop("arrays", [])
    if not isinstance(metas, list) or len(metas) != len(frames) - 1:
        raise RequestError(f"message announces {len(metas)} arrays but carries {len(frames) - 1}")
    arrays = {}
    for meta, frame in zip(metas, frames[1:]):
        buffer = bytearray(frame)
        array, nbytes = _array(meta, buffer, 0, len(buffer))
        if nbytes != len(buffer):
            raise RequestError(f"array {meta.get('name')!r}: {len(buffer)} bytes do not make {array.dtype} {array.shape}")
        arrays[str(meta.get("name"))] = array
    return arrays


# A request is ONE frame: its sequence number first (8 bytes), then the header's length
# (4 bytes), the JSON header, and the arrays, each at a 64-byte aligned offset. The server
# reads the sequence number before anything else, so even a request it cannot parse gets an
# answer its caller is waiting for; and zmq's per-frame limit (ZMQ_MAXMSGSIZE) then bounds
# the frame before it is buffered (arrays placed in the client's block count against the
# same limit when they are copied: ``copy_placed``).
_PREFIX = struct.Struct("<QI")


def _metas(arrays: dict) -> list:
    return [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in arrays.items()]


def aligned(n: int) -> int:
    """n rounded up to the arrays' alignment (ALIGN bytes)."""
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _nbytes(dtype: np.dtype, shape) -> int:
    return math.prod(shape) * dtype.itemsize


def place_arrays(header: dict, arrays: dict, block) -> bool:
    """Write a request's arrays into `block` (the client's shared-memory result block the
    request offers) when they fit, and their placements into header["request_placed"] (see
    ``copy_placed``); whether they were (the frame then carries none of them)."""
    if not arrays:
        return False
    metas, needed = layout(arrays)
    if needed > len(block):
        return False
    write_block(block, arrays, metas)
    header["request_placed"] = metas
    return True


def pack_request(seq: int, header: dict, arrays: dict) -> list:
    """The frames of one request (a single frame; see above)."""
    arrays = {name: host(a) for name, a in arrays.items()}
    head = json.dumps(dict(header, arrays=_metas(arrays))).encode()
    offset = aligned(_PREFIX.size + len(head))
    starts = []
    for a in arrays.values():
        starts.append(offset)
        offset += aligned(a.nbytes)
    frame = bytearray(offset)
    _PREFIX.pack_into(frame, 0, seq, len(head))
    frame[_PREFIX.size:_PREFIX.size + len(head)] = head
    for start, a in zip(starts, arrays.values()):
        np.frombuffer(frame, np.uint8, a.nbytes, start)[:] = a.reshape(-1).view(np.uint8)
    return [frame]


def request_seq(frames: list) -> int | None:
    """The sequence number of a request, read before anything else of it; None when the
    message is too short to hold one."""
    return _PREFIX.unpack_from(frames[0], 0)[0] if len(frames) >= 1 and len(frames[0]) >= _PREFIX.size else None


def unpack_request(frames: list, max_bytes: int) -> tuple[dict, dict]:
    """(header, arrays) of a request's frames (the arrays copied once into writable memory);
    RequestError naming what is wrong when they are not one well-formed request."""
    if len(frames) != 1 or len(frames[0]) < _PREFIX.size:
        raise RequestError(f"a request is one frame of at least {_PREFIX.size} bytes; got {len(frames)} frame(s)")
    frame = bytearray(frames[0])
    if len(frame) > max_bytes:
        raise RequestError(f"request of {len(frame):,} bytes exceeds the server's limit of {max_bytes:,} bytes "
                           "(max_request_bytes); reload big tables from a Parquet path instead")
    _, head_len = _PREFIX.unpack_from(frame, 0)
    if _PREFIX.size + head_len > len(frame):
        raise RequestError(f"request header of {head_len} bytes runs past the {len(frame)}-byte request")
    header = _header(bytes(frame[_PREFIX.size:_PREFIX.size + head_len]))
    metas = header.pop("arrays", [])
    if not isinstance(metas, list):
        raise RequestError("request header: 'arrays' must be a list")
    _check_count(len(metas))
    return header, _arrays(metas, frame, aligned(_PREFIX.size + head_len), len(frame))


def _check_count(n: int) -> None:
    if n > MAX_REQUEST_ARRAYS:
        raise RequestError(f"request carries {n:,} arrays; at most {MAX_REQUEST_ARRAYS:,} are accepted (a reload "
                           "sends up to three a column: reload a table that wide from a Parquet path instead)")


def _header(text: bytes) -> dict:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError) as e:
        raise RequestError(f"message header is not JSON: {e}") from None
    except RecursionError:  # json's decoder recurses per nesting level
        raise RequestError("message header nests its JSON too deeply") from None
    if not isinstance(header, dict):
        raise RequestError(f"message header must be a JSON object; got {type(header).__name__}")
    return header


def _arrays(metas: list, buffer: bytearray, offset: int, end: int) -> dict:
    """The arrays metas describe, laid out from offset (each at a 64-byte aligned offset,
    padded to one), which must fill the buffer exactly up to end."""
    arrays = {}
    for meta in metas:
        arrays[str(meta.get("name"))], nbytes = _array(meta, buffer, offset, end)
        offset += aligned(nbytes)
    if offset != end:
        raise RequestError(f"request has {end - offset} bytes beyond its {len(metas)} arrays")
    return arrays


def _array(meta, buffer, offset: int, end: int) -> tuple[np.ndarray, int]:
    """The array meta describes at buffer[offset:], and its size; RequestError when the
    buffer ends before it does."""
    dtype, shape = _check_meta(meta)
    nbytes = _nbytes(dtype, shape)
    if offset + nbytes > end:
        raise RequestError(f"array {meta.get('name')!r}: {dtype} {shape} needs {nbytes} bytes; "
                           f"the message has {max(end - offset, 0)} left")
    return np.frombuffer(buffer, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset).reshape(shape), nbytes


# Where a reply placed an array in a result block: [name, dtype, shape, offset]. A list, not
# an object: a fused answer places ~20 arrays, and the server's json.dumps of their
# descriptions as objects took ~0.1 ms a call (the keys), more than their numbers.
def placed_meta(name: str, a, offset: int) -> list:
    """The description of array a at offset in a result block."""
    return [name, dtype_of(a).str, list(a.shape), offset]


def layout(arrays: dict, start: int = 0) -> tuple[list, int]:
    """Placement of arrays in one result block from offset start: (their ``placed_meta``,
    bytes needed up to the end of the last one)."""
    metas, offset = [], start
    for name, a in arrays.items():
        metas.append(placed_meta(name, a, offset))
        offset += aligned(_nbytes(dtype_of(a), a.shape))
    return metas, offset


def write_block(block: memoryview, arrays: dict, metas: list) -> None:
    """Copy arrays into a result block where ``layout`` placed them."""
    for (_, _, _, offset), a in zip(metas, arrays.values()):
        a = host(a)
        view = np.frombuffer(block, dtype=a.dtype, count=a.size, offset=offset)
        view[...] = a.reshape(-1)


def placed_range(meta, size: int) -> tuple[str, np.dtype, tuple, int, int]:
    """(name, dtype, shape, offset, bytes) of an array a reply or request places in a result block of
    `size` bytes (``placed_meta``), checked to lie inside it: RequestError otherwise."""
    if not isinstance(meta, list) or len(meta) != 4:
        raise RequestError(f"array placement must be [name, dtype, shape, offset]; got {str(meta)[:100]}")
    name, dtype, shape, offset = meta
    name = str(name)
    dtype, shape = _dtype_and_shape(name, dtype, shape)
    nbytes = _nbytes(dtype, shape)
    if type(offset) is not int or offset < 0 or offset + nbytes > size:
        raise RequestError(f"array {name!r} is placed at bytes {str(offset)[:40]}..+{nbytes}, outside "
                           f"the {size}-byte result block")
    return name, dtype, shape, offset, nbytes


def copy_placed(block, metas, max_bytes: int) -> dict:
    """Private copies of the arrays a request placed in its client's result block
    (``place_arrays``). Each placement is checked first (``placed_range``); they must follow
    one another without overlap, as ``layout`` places them, so a request copies at most its
    block's bytes, each once; their names must differ; all of them together are bounded by
    max_bytes, as a request frame is. Copied before anything reads them: the client can write
    to its block at any time, and what the server checks must be what it then uses."""
    if not isinstance(metas, list):
        raise RequestError(f"request_placed must be a list of placements; got {str(metas)[:100]}")
    _check_count(len(metas))
    placed = [placed_range(meta, len(block)) for meta in metas]
    end = 0
    for name, _, _, offset, nbytes in placed:
        if offset < end:
            raise RequestError(f"array {name!r} is placed at byte {offset}, before the end ({end}) of the array "
                               "placed before it; placements follow one another without overlap")
        end = offset + nbytes
    if len({name for name, *_ in placed}) != len(placed):
        raise RequestError("request_placed names an array twice")
    total = sum(nbytes for *_, nbytes in placed)
    if total > max_bytes:
        raise RequestError(f"request of {total:,} bytes exceeds the server's limit of {max_bytes:,} bytes "
                           "(max_request_bytes); reload big tables from a Parquet path instead")
    return {name: np.frombuffer(block, dtype, nbytes // dtype.itemsize, offset).reshape(shape).copy()
            for name, dtype, shape, offset, nbytes in placed}


def read_block(block, metas: list) -> dict:
    """Arrays that are views of a shared-memory block (no copy), each placement checked first
    (``placed_range``). Every array is a view of one base array over the block's used part,
    so a caller watches that one base to know when the last of them is gone
    (``np.ndarray.base``; an array derived from a view keeps it too)."""
    placed = [placed_range(meta, len(block)) for meta in metas]
    base = np.frombuffer(block, np.uint8, count=max((o + n for _, _, _, o, n in placed), default=0))
    # np.ndarray over base: one call per array (half the cost of slicing, viewing and reshaping)
    return {name: np.ndarray(shape, dtype, base, offset) for name, dtype, shape, offset, _ in placed}


# ---- values <-> (JSON args, arrays) -------------------------------------------------------
def encode(name: str, value, arrays: dict, row_lengths: bool = False):
    """The JSON description of value; its arrays go into `arrays` (as they are: host copies are
    made when the message is sent) under names starting with name. With `row_lengths` (an
    answer the server just built), a RaggedTensor whose rows the package built all alike
    goes as its row count and length, not its offsets."""
    if isinstance(value, (list, tuple)):  # ids and counts may be lists (sampler.py): numpy reads them as in-process
        value = listed_array(value, name)
    if isinstance(value, np.ndarray) and value.dtype.hasobject:  # no bytes to send; the server refuses other dtypes
        raise RequestError(f"{name} has dtype {value.dtype}, which cannot be sent to the sampling server; ids and "
                           "counts must be integers (int64), e.g. torch.tensor([...], dtype=torch.int64)")
    if isinstance(value, RaggedTensor):
        arrays[f"{name}.values"] = value.values()
        desc = {"ragged": name, "weight": value.weight() is not None}
        if row_lengths and value._row_length is not None:
            desc.update(rows=value.row_count, row_length=value._row_length)
        else:
            arrays[f"{name}.offsets"] = value.offsets()[0]
        if value.weight() is not None:
            arrays[f"{name}.weight"] = value.weight()
        return desc
    if isinstance(value, (torch.Tensor, np.ndarray)):
        arrays[name] = value
        return {"array": name, "numpy": isinstance(value, np.ndarray)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    raise RequestError(f"{name}: a {type(value).__name__} cannot be sent to the sampling server; "
                       "give tensors, RaggedTensors, numpy arrays, lists or numbers")


def tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.from_numpy(a)


def decode(desc, arrays: dict):
    """The value `encode` described (numpy arrays become torch tensors unless they were numpy;
    tensors, e.g. views of a CUDA result block, stay as they are); RequestError when the
    description names arrays the message does not carry or makes an invalid RaggedTensor."""
    if isinstance(desc, dict) and "ragged" in desc:
        name = desc["ragged"]
        weight_part = [f"{name}.weight"] if desc.get("weight") else []
        if "row_length" in desc:
            _require([f"{name}.values", *weight_part], arrays)
            values = arrays[f"{name}.values"]
            weight = arrays[weight_part[0]] if weight_part else None
            offsets = _uniform_offsets(name, desc, values, weight)  # made here: nothing to check
            return RaggedTensor._from_parts(tensor(values), tensor(offsets), None if weight is None else tensor(weight),
                                            desc["row_length"])
        _require([f"{name}.values", f"{name}.offsets", *weight_part], arrays)
        values, offsets = arrays[f"{name}.values"], arrays[f"{name}.offsets"]
        weight = arrays[weight_part[0]] if weight_part else None
        try:
            if isinstance(values, np.ndarray) and isinstance(offsets, np.ndarray) \
                    and (weight is None or isinstance(weight, np.ndarray)):
                return RaggedTensor._from_arrays(values, offsets, weight)
            return RaggedTensor(tensor(values), tensor(offsets), None if weight is None else tensor(weight))
        except (ValueError, TypeError, RuntimeError, NotImplementedError) as e:
            raise RequestError(f"{name}: not a valid RaggedTensor: {e}") from None
    if isinstance(desc, dict) and "array" in desc:
        _require([desc["array"]], arrays)
        a = arrays[desc["array"]]
        return a if isinstance(a, np.ndarray) and (desc.get("numpy") or a.dtype.kind == "S") else tensor(a)
    return desc


def _uniform_offsets(name: str, desc: dict, values, weight):
    """The offsets of `desc`'s rows rows of row_length values each, made here (numpy, or a
    tensor on the values' device), after checking the values (and weight) hold exactly that
    many: RequestError otherwise."""
    rows, length = desc.get("rows"), desc["row_length"]
    if not all(type(x) is int for x in (rows, length)) or rows < 0 or length < 1:
        raise RequestError(f"{name}: rows {rows!r} of row_length {length!r}: expected integers, rows >= 0, "
                           "row_length >= 1")
    for part, a in (("values", values), ("weight", weight)):
        if a is not None and (a.ndim != 1 or a.shape[0] != rows * length):
            raise RequestError(f"{name}: {part} of shape {tuple(a.shape)} for {rows} rows of {length}; "
                               f"expected ({rows * length},)")
    if isinstance(values, np.ndarray):
        return np.arange(0, (rows + 1) * length, length, dtype=np.int64)
    return torch.arange(0, (rows + 1) * length, length, dtype=torch.int64, device=values.device)


def _require(names: list, arrays: dict) -> None:
    missing = [n for n in names if not isinstance(n, str) or n not in arrays]
    if missing:
        raise RequestError(f"the request refers to arrays {missing} it does not carry")


def encode_table(prefix: str, table: dict, arrays: dict) -> list:
    """A feature table (name -> tensor / RaggedTensor / bytes array) as a list of (name, desc)."""
    return [[name, encode(f"{prefix}{k}", value, arrays, row_lengths=True)]
            for k, (name, value) in enumerate(table.items())]


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
