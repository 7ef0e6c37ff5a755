"""examples/train_two_tower.py trains under torchrun (2 ranks here; the README shows 8)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_two_tower_example_trains_under_torchrun():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(ROOT / "examples" / "train_two_tower.py"), "--steps", "15", "--items", "5000"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = [line for line in run.stdout.splitlines() if line.startswith("mean loss over ranks")]
    assert summary and "2 ranks" in summary[0], run.stdout[-2000:]
