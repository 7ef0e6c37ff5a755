"""The numbers both kernel paths must agree on, read back from kernels/*.cu(h): a change on
one side only fails here, before any parity test has to find it by chance."""
import re

import numpy as np
import pytest

from gpu_negsample import hashing, rng
from gpu_negsample.backends import kernel_constants as kc
from gpu_negsample.backends.cuda import kernel_sources as ks


def cuda_text() -> str:
    return "\n".join(p.read_text() for p in sorted(ks.kernel_dir().glob("*.cu*")))


def define(name: str) -> int:
    found = re.findall(rf"#define {name} \(?(-?[0-9A-Fa-fx]+)(?:LL)?(?: - 1\))?", cuda_text())
    assert len(found) == 1, f"#define {name} appears {len(found)} times"
    value = int(found[0], 0)
    return value - 1 if name == "GN_EMPTY_KEY" else value  # written as (-9223372036854775807LL - 1)


@pytest.mark.parametrize("name,value", [
    ("GN_MAX_ATTEMPTS", kc.MAX_ATTEMPTS),
    ("GN_STATUS_NO_CANDIDATE", kc.STATUS_NO_CANDIDATE),
    ("GN_STATUS_TOO_FEW", kc.STATUS_TOO_FEW),
    ("GN_EMPTY_KEY", int(hashing.EMPTY_KEY)),
    ("GN_NOT_FOUND", int(hashing.NOT_FOUND)),
])
def test_defines_match(name, value):
    assert define(name) == value


def hex_constants(text: str) -> set[int]:
    return {int(h, 16) for h in re.findall(r"0x([0-9A-Fa-f]{8,16})", text)}


def test_mixer_and_philox_constants_match():
    probe = (ks.kernel_dir() / "hash_probe.cuh").read_text()
    assert {int(hashing._C1), int(hashing._C2)} <= hex_constants(probe)
    shifts = [int(x) for x in re.findall(r"z >> (\d+)", probe)]
    assert shifts == [int(hashing._S30), int(hashing._S27), int(hashing._S31)]
    philox = (ks.kernel_dir() / "philox.cuh").read_text()
    assert {int(rng._M0), int(rng._M1), int(rng._W0), int(rng._W1)} <= hex_constants(philox)
    assert re.search(r"round < 10", philox) and np.uint64(10) == 10  # Philox4x32-*10*


def test_a_head_fits_the_cpu_kernels_bitmask_of_drawn_head_positions():
    """Without replacement, the CPU kernel marks a row's drawn head items as bits of one
    uint64 (backends/cpu/sample.py, _scan's drawn_positions): a head of more than 64 items would wrap."""
    from gpu_negsample.index import HEAD_SIZE
    assert 0 < HEAD_SIZE <= 64, HEAD_SIZE
