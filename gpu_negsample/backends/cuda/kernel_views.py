"""Host side of views.cuh: structs of 8-byte fields written into device memory."""
from __future__ import annotations

import numpy as np

from .kernel_sources import view_fields


def view_words(struct: str, fields: dict) -> np.ndarray:
    """The uint64 words of `struct` with each pointer field = fields[name].data_ptr() (a
    tensor; None is a null pointer) and each count field = int(fields[name]). The caller
    keeps the tensors alive."""
    layout = view_fields(struct)
    missing = [name for name, _ in layout if name not in fields]
    if missing:
        raise KeyError(f"{struct} fields without a value: {missing}")
    words = [(0 if fields[name] is None else fields[name].data_ptr()) if pointer else int(fields[name])
             for name, pointer in layout]
    return np.array(words, dtype=np.int64).view(np.uint64)  # counts may be negative (two's complement)


def pack_view(device, struct: str, fields: dict):
    """A device buffer holding one `struct` (see view_words)."""
    return device.upload(view_words(struct, fields))
