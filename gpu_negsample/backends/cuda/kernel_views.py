"""Host side of views.cuh: the IndexView / ExclusionView structs written into device memory."""
from __future__ import annotations

import numpy as np

from .kernel_sources import view_fields


def pack_view(device, struct: str, fields: dict):
    """A device buffer holding `struct` with each pointer field = the address of fields[name]
    (a device array) and each count field = int(fields[name]). The caller keeps the arrays alive."""
    layout = view_fields(struct)
    missing = [name for name, _ in layout if name not in fields]
    if missing:
        raise KeyError(f"{struct} fields without a value: {missing}")
    words = np.array([device.address(fields[name]) if pointer else int(fields[name]) for name, pointer in layout],
                     dtype=np.uint64)
    return device.upload(words)
