"""Where compiled code is cached: numba's machine code and the kernel emulation library.

numba's own cache is keyed by each function's source file only, so a change to a helper
it inlines from another file (``hashing.probe`` inside ``backends/cpu/lookup.py``) would
be served stale from ``__pycache__``. The package's numba functions are therefore cached
in a directory keyed by a digest of the package's import name and of every module of the
package that uses numba: any change to one recompiles them all, once. The name is in the
digest because a cache entry names the module its function came from: a copy of the
package imported under another name (an A/B copy of an older version) would otherwise
share the directory and serve that module's entries, which fail to load. Other code's numba functions are untouched (the locator answers only for
files of this package).
"""
from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

log = logging.getLogger("gpu_negsample")

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_NAME = __name__.rpartition(".")[0]
DRIVERS = ("compile_cache.py", "precompile.py")  # name numba, compile nothing


def cache_dir() -> Path:
    """$GPU_NEGSAMPLE_CACHE, else ~/.cache/gpu_negsample."""
    root = os.environ.get("GPU_NEGSAMPLE_CACHE") or Path.home() / ".cache" / "gpu_negsample"
    return Path(root)


@functools.lru_cache(maxsize=1)
def package_digest() -> str:
    """Digest of the package's import name and every module of it that defines or imports numba code
    (modules that only drive it, this one and precompile.py, are left out: editing them recompiles nothing)."""
    h = hashlib.sha256(PACKAGE_NAME.encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        text = path.read_bytes()
        if b"numba" in text and path.name not in DRIVERS:
            h.update(str(path.relative_to(PACKAGE_DIR)).encode())
            h.update(text)
    return h.hexdigest()[:16]


def _install_numba_locator() -> None:
    from numba.core import caching

    class PackageCacheLocator(caching._SourceFileBackedLocatorMixin, caching._CacheLocator):
        """numba cache files of this package's functions, under a directory per package digest."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            relative = Path(py_file).resolve().parent.relative_to(PACKAGE_DIR)
            self._cache_path = str(cache_dir() / f"numba-{package_digest()}" / relative)

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if not Path(py_file).resolve().is_relative_to(PACKAGE_DIR):
                return None
            return super().from_function(py_func, py_file)  # None when the directory is not writable

    if not any(c.__name__ == "PackageCacheLocator" for c in caching.CacheImpl._locator_classes):
        caching.CacheImpl._locator_classes.insert(0, PackageCacheLocator)


try:
    _install_numba_locator()
except (ImportError, AttributeError) as e:  # a numba without these internals: its own cache, as it is
    log.debug("numba cache keyed by package digest unavailable (%s); using numba's default cache", e)
