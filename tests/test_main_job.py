"""The main job (python -m gpu_negsample): its figures exclude compile time, its report
is printed once, and its --help names the console script."""
import logging
import re
import time
import types

import pytest

import gpu_negsample.__main__ as job

SMALL = ["--items", "20000", "--categories", "10", "--batches", "3", "--batch-size", "256", "--negatives", "4"]
COMPILE_S = 1000.0  # a compile far longer than the whole small job


def test_timed_figures_exclude_the_compile(monkeypatch, capsys):
    """A fake clock jumps COMPILE_S seconds at the end of the warm-up: the compile line shows
    it, and neither the load nor the pipeline figures contain it."""
    offset = [0.0]
    monkeypatch.setattr(job, "time", types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0]))
    real_warm_up = job.warm_up

    def slow_compile(args):
        seconds = real_warm_up(args)
        offset[0] += COMPILE_S  # the clock moves on as if the compile had taken COMPILE_S more
        return seconds + COMPILE_S

    monkeypatch.setattr(job, "warm_up", slow_compile)
    job.main(SMALL)
    out = capsys.readouterr().out
    compile_line = [line for line in out.splitlines() if line.startswith("compile")]
    assert len(compile_line) == 1, out
    assert float(re.search(r"([\d.]+) s", compile_line[0]).group(1)) >= COMPILE_S
    load = float(re.search(r"load \+ index: ([\d.]+) s", out).group(1))
    pipeline = float(re.search(r"([\d.]+) s in the pipeline", out).group(1))
    assert load < COMPILE_S and pipeline < COMPILE_S, out
    assert out.index("compile") < out.index("load + index") < out.index("in the pipeline")


def test_the_table_report_is_printed_once(capsys, caplog):
    caplog.set_level(logging.INFO, logger="gpu_negsample")
    job.main(SMALL)
    everything = capsys.readouterr().out + caplog.text
    assert everything.count("MiB arena") == 1, everything
    assert everything.count("placement on") == 1, everything


def test_help_names_the_console_script(capsys):
    with pytest.raises(SystemExit):
        job.main(["--help"])
    assert "gpu-negsample-demo" in capsys.readouterr().out
