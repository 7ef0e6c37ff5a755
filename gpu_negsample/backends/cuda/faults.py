"""Which CUDA errors leave a context unusable, and their translation into DeviceFaultError.

After an illegal address, a kernel exception or an uncorrectable ECC error every later
call on the context fails with the same error ("sticky"): retrying is pointless, so the
request's error says the process must exit instead of looking like a bad request.
Errors are recognised by CUDA's status code (CuPy's runtime and driver errors carry it
as ``status``) or by the text torch puts in its RuntimeError.
"""
from __future__ import annotations

import contextlib

from ...errors import DeviceFaultError

# cudaError_t codes of the sticky errors (the driver's CUresult codes are the same numbers).
STICKY_CODES = {
    214: "uncorrectable ECC error",
    700: "illegal memory access",
    702: "launch timeout",
    709: "context is destroyed",
    714: "hardware stack error",
    715: "illegal instruction",
    716: "misaligned address",
    717: "invalid address space",
    718: "invalid program counter",
    719: "kernel launch failure",
}
# How torch words the same errors ("CUDA error: an illegal memory access was encountered").
STICKY_TEXT = ("illegal memory access", "uncorrectable ecc error", "misaligned address", "illegal instruction",
               "unspecified launch failure", "hardware stack error", "invalid program counter",
               "context is destroyed", "the launch timed out")


def sticky_reason(exc: BaseException) -> str | None:
    """Why exc means the CUDA context is dead, or None when it does not."""
    code = getattr(exc, "status", None)
    if isinstance(code, int) and code in STICKY_CODES:
        return f"CUDA error {code} ({STICKY_CODES[code]})"
    text = str(exc).lower()
    if "cuda" in text:
        for phrase in STICKY_TEXT:
            if phrase in text:
                return f"CUDA error ({phrase})"
    return None


@contextlib.contextmanager
def device_faults(where: str):
    """Re-raise a sticky CUDA error escaping the block as DeviceFaultError (others pass as they are)."""
    try:
        yield
    except DeviceFaultError:
        raise
    except Exception as exc:
        reason = sticky_reason(exc)
        if reason is None:
            raise
        raise DeviceFaultError(f"{where}: {reason}: {exc}. The GPU context of this process is unusable; every "
                               "later request would fail the same way, so the process must exit (restart the "
                               "job; run the failing request under compute-sanitizer to find the fault)") from exc
