"""The CUDA sources in kernels/: where they are, what kernels they define, and their views.

Both ways of running them read the sources through this module: CuPy/NVRTC on a GPU
(``cupy_device``) and g++ on the CPU (``emulated_device``), and so does the CI compile
check. Kernel signatures and the IndexView/ExclusionView layouts are parsed from the
sources themselves, so nothing on the host side restates them.
"""
from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The NVRTC options CuPy compiles RawModules with (plus -arch of the device); the CI
# compile check uses the same.
NVRTC_OPTIONS = ("--std=c++17", "-ftz=true", "--device-as-default-execution-space")

_KERNEL = re.compile(r'extern "C" __global__ void (\w+)\(([^)]*)\)')
_STRUCT = re.compile(r"struct (\w+) \{([^}]*)\};")
_FIELD = re.compile(r"(?:const )?(\w+)(\*?) (\w+);")


def kernel_dir() -> Path:
    """kernels/ of a source checkout, or the copy installed with the package."""
    checkout = Path(__file__).resolve().parents[3] / "kernels"
    if (checkout / "sample.cu").exists():
        return checkout
    installed = Path(__file__).resolve().parents[2] / "kernels"
    if (installed / "sample.cu").exists():
        return installed
    raise FileNotFoundError(f"CUDA sources not found in {checkout} or {installed}; reinstall gpu_negsample")


def sources() -> list[Path]:
    """Every .cu file (one per concept: lookup, sample, combine, gather)."""
    return sorted(kernel_dir().glob("*.cu"))


@functools.lru_cache(maxsize=1)
def source_hash() -> str:
    """Digest of every kernel source and header: part of each compile cache key."""
    h = hashlib.sha256()
    for path in sorted(kernel_dir().rglob("*")):
        if path.suffix in (".cu", ".cuh", ".h"):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Param:
    ctype: str    # the C type as written, e.g. "const i64*", "u32"
    name: str

    @property
    def is_pointer(self) -> bool:
        return "*" in self.ctype


@dataclass(frozen=True)
class Kernel:
    name: str
    source: Path
    params: tuple[Param, ...]


def _param(text: str) -> Param:
    text = " ".join(text.replace("__restrict__", "").split())
    name = re.findall(r"\w+", text)[-1]
    return Param(text[: text.rfind(name)].strip(), name)


@functools.lru_cache(maxsize=1)
def kernels() -> dict[str, Kernel]:
    """Every extern "C" kernel of kernels/*.cu, by name."""
    found = {}
    for path in sources():
        for name, params in _KERNEL.findall(path.read_text()):
            found[name] = Kernel(name, path, tuple(_param(p) for p in params.split(",")))
    return found


@functools.lru_cache(maxsize=None)
def view_fields(struct: str) -> tuple[tuple[str, bool], ...]:
    """(field name, is pointer) of a struct in views.cuh, in layout order (all 8-byte fields)."""
    text = (kernel_dir() / "views.cuh").read_text()
    for name, body in _STRUCT.findall(text):
        if name == struct:
            return tuple((field, bool(star)) for _, star, field in _FIELD.findall(body))
    raise KeyError(f"struct {struct} is not in views.cuh")


# Host types of the scalar kernel parameters.
SCALARS = {"i64": np.int64, "u64": np.uint64, "u32": np.uint32}
