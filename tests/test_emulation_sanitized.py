"""The emulated kernels under AddressSanitizer and the alignment check: an out-of-bounds read
or write, or a misaligned (e.g. 16-byte vector) load, in any kernel the parity tests reach
fails this test (the emulation library is rebuilt with -fsanitize=address,alignment and the
sanitizer runtimes are preloaded into a child pytest)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBSET = "emulated and (pack_feature or with_replacement or without_replacement or batch_wide or exact_scan)"


@pytest.mark.skipif(shutil.which("g++") is None, reason="no g++ to build the kernel emulation")
def test_parity_subset_is_clean_under_address_sanitizer():
    runtimes = [subprocess.run(["g++", f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
                for lib in ("libasan.so", "libubsan.so")]
    if not all(os.path.isabs(r) for r in runtimes):
        pytest.skip("g++ has no AddressSanitizer / UBSan runtime here")
    # No GPU in the child: the CUDA driver and ASan's shadow memory do not mix.
    env = dict(os.environ, LD_PRELOAD=" ".join(runtimes), ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1", CUDA_VISIBLE_DEVICES="",
               GPU_NEGSAMPLE_EMU_FLAGS="-fsanitize=address,alignment -fno-sanitize-recover=alignment "
                                       "-fno-omit-frame-pointer",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_cuda_parity.py"), "-k", SUBSET],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    text = run.stdout + run.stderr
    first = min([i for i in (text.find("ERROR: AddressSanitizer"), text.find("runtime error")) if i >= 0],
                default=max(0, len(text) - 4000))
    report = text[first:first + 4000]  # the sanitizer's own first lines: what and where
    assert "AddressSanitizer" not in report and "runtime error" not in report, report
    assert run.returncode == 0 and " passed" in run.stdout, report
