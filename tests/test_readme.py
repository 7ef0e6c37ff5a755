"""Every Python block of README.md runs as it stands; the set-up section keeps its two commands.

A block whose first line is ``# runs in its own process`` (it starts a sampling server)
runs in a subprocess; the others run here, each in a fresh namespace. Each block runs in
an empty directory (they write small Parquet files)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README, re.S | re.M)
OWN_PROCESS = "# runs in its own process"


def test_the_readme_has_python_blocks_and_no_other_unchecked_code():
    assert len(BLOCKS) >= 4
    fences = re.findall(r"^```(\w*)$", README, re.M)
    assert set(fences) <= {"python", ""}, f"code blocks of a language the test does not run: {set(fences)}"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs(index, tmp_path, monkeypatch):
    code = BLOCKS[index]
    first_line = code.splitlines()[0]
    monkeypatch.chdir(tmp_path)
    if first_line.startswith(OWN_PROCESS):
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                             cwd=tmp_path)
        assert run.returncode == 0, f"README block {index}:\n{code}\n{run.stderr[-3000:]}"
    else:
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": f"readme_block_{index}"})


def test_the_set_up_section_gives_the_two_commands():
    setup = README[README.index("## Set-up"):README.index("## Use")]
    commands = re.findall(r"^    (python3 -m venv .*)$", setup, re.M)
    assert len(commands) == 2, commands
    assert commands[0].endswith("pip install torch==2.13.0 -e . && python -m gpu_negsample")
    assert commands[1].endswith("pip install torch==2.13.0 -e '.[test]' && python -m pytest -q")
    assert "pip install -q torch==2.13.0 -e '.[test]' && python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    assert "gpu-negsample-demo" in setup
