"""The emulated kernels under AddressSanitizer: an out-of-bounds read or write in any kernel
the parity tests reach fails this test (the emulation library is rebuilt with
-fsanitize=address and the ASan runtime is preloaded into a child pytest)."""
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
    runtime = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(runtime):
        pytest.skip("g++ has no AddressSanitizer runtime here")
    # No GPU in the child: the CUDA driver and ASan's shadow memory do not mix.
    env = dict(os.environ, LD_PRELOAD=runtime, ASAN_OPTIONS="detect_leaks=0:protect_shadow_gap=0",
               CUDA_VISIBLE_DEVICES="",
               GPU_NEGSAMPLE_EMU_FLAGS="-fsanitize=address -fno-omit-frame-pointer",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
                          str(ROOT / "tests" / "test_cuda_parity.py"), "-k", SUBSET],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    report = (run.stdout + run.stderr)[-4000:]
    assert "AddressSanitizer" not in report, report
    assert run.returncode == 0 and " passed" in run.stdout, report
