"""Programs the lifecycle tests run as their own processes (python lifecycle_scripts.py NAME JOB)."""
import sys
import time

from gpu_negsample import LocalRpcDataSampler
from server_tables import catalogue


def raise_without_close(job: str) -> None:
    """Training that fails with an exception: the sampler is never closed."""
    s = LocalRpcDataSampler("category", "item_id", "weight", "skey", device="cpu", name=job)
    s.reload(catalogue().table)
    print(f"server {s.server_pid}", flush=True)
    raise RuntimeError("training failed")


if __name__ == "__main__":
    globals()[sys.argv[1]](sys.argv[2])
