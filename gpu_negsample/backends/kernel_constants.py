"""Constants the numba kernels and kernels/*.cu must agree on (tests/test_kernel_constants.py
reads them back from the CUDA sources)."""

MAX_ATTEMPTS = 32         # alias draws of one tail draw before its exact scan (GN_MAX_ATTEMPTS)
STATUS_OK = 0
STATUS_NO_CANDIDATE = 1   # every candidate of the row is excluded (or has zero weight)
STATUS_TOO_FEW = 2        # without replacement: fewer distinct candidates than asked
