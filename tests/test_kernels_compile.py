"""Every kernels/*.cu compiles with NVRTC for sm_80 and sm_90, with the options CuPy uses at
run time. NVRTC needs no GPU (cuda-bindings + nvidia-cuda-nvrtc, installed by the test extra).
Register use and spills are reported (pytest -s prints them); a spill is a warning."""
import re
import warnings

import pytest

from gpu_negsample.backends.cuda import kernel_sources as ks

nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed (pip install -e '.[test]')")

ARCHES = ("sm_80", "sm_90")
_ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(\w+)'.*?(\d+) bytes spill stores.*?Used (\d+) registers",
                    re.S)


def _check(result, what):
    err = result[0] if isinstance(result, tuple) else result
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, f"{what}: {err}"
    return result[1:] if isinstance(result, tuple) and len(result) > 1 else None


def compile_source(path, arch):
    """(success, log, cubin bytes) of one source for one architecture."""
    err, prog = nvrtc.nvrtcCreateProgram(path.read_bytes(), path.name.encode(), 0, [], [])
    _check(err, "nvrtcCreateProgram")
    options = [o.encode() for o in ks.NVRTC_OPTIONS + (f"-arch={arch}", f"-I{ks.kernel_dir()}", "-Xptxas=-v")]
    (compiled,) = nvrtc.nvrtcCompileProgram(prog, len(options), options)
    _, size = nvrtc.nvrtcGetProgramLogSize(prog)
    log = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, log)
    cubin = b""
    if compiled == nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, n = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * n
        nvrtc.nvrtcGetCUBIN(prog, cubin)
    nvrtc.nvrtcDestroyProgram(prog)
    return compiled == nvrtc.nvrtcResult.NVRTC_SUCCESS, log.decode(errors="replace").rstrip("\x00 "), cubin


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("source", ks.sources(), ids=lambda p: p.name)
def test_kernel_compiles_with_nvrtc(source, arch):
    ok, log, cubin = compile_source(source, arch)
    assert ok, f"{source.name} does not compile for {arch}:\n{log}"
    assert cubin, f"{source.name}: NVRTC produced no cubin for {arch}"
    entries = {name: (int(spills), int(regs)) for name, _, spills, regs in _ENTRY.findall(log)}
    defined = {k.name for k in ks.kernels().values() if k.source == source}
    assert defined <= entries.keys(), f"kernels missing from the {arch} cubin: {defined - entries.keys()}"
    for name, (spills, regs) in sorted(entries.items()):
        print(f"{arch} {name}: {regs} registers, {spills} bytes spilled")
        if spills:
            warnings.warn(f"{name} spills {spills} bytes of registers on {arch}")
