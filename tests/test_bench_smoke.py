"""The benchmarks run end to end at toy sizes: bench_cuda.py on the CPU emulation (its GPU-only
peers are skipped there), device_check.sh's node server step with its own arguments on the
emulation, and bench/device_check.sh parses, so the check a GPU machine runs is known to work
before it gets there; bench_cpu.py reports only figures of its own run."""
import importlib.util
import inspect
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devices import needs_gxx

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"
CHECK = BENCH_DIR / "device_check.sh"
SECTIONS = ("sample_ids", "check_against_cpu", "limits", "gather", "lookups", "pack_feature", "variants", "targets")


def load_bench(monkeypatch, name="bench_cuda"):
    monkeypatch.syspath_prepend(str(BENCH_DIR))  # as when run as a script: bench/ is on the path
    spec = importlib.util.spec_from_file_location(name, BENCH_DIR / f"{name}.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def run_tiny(bench, out):
    bench.main(["--device", "emulated", "--items", "3000", "--categories", "10", "--sizes", "64,128",
                "--gather-rows", "500", "--lookup-ids", "1000", "--copy-mib", "1", "--repeats", "2",
                "--out", str(out)])
    return json.loads((out / "bench_cuda.json").read_text())


@needs_gxx
def test_bench_cuda_runs_on_the_emulation(tmp_path, capsys, monkeypatch):
    results = run_tiny(load_bench(monkeypatch), tmp_path)
    assert not [name for name in SECTIONS if "error" in results[name]], results
    assert set(results["sample_ids"]) == {"64x10", "128x10"}
    for size in ("64x10", "128x10"):
        r, v = results["sample_ids"][size], results["variants"][size]
        assert r["kernels_per_s"] > 0 and r["sample_ids_call_per_s"] > 0 and r["sample_ids_host_us_per_call"] > 0
        for key in ("distinct_call_per_s", "batch_exclusion_call_per_s", "batch_exclusion_kernels_per_s", "fused_call_s"):
            assert v[key] > 0, (size, key)
    assert results["check_against_cpu"] == {"negatives": 1280, "mismatches": 0, "equal": True}
    assert results["gather"]["gpu_resident_Bps"] > 0 and results["lookups"]["valid_ids_per_s"] > 0
    assert set(results["targets"]) == {"sample_1Mx10_per_s", "sample_1Mx10_call_per_s", "sample_4096x10_call_s",
                                       "fused_4096x10_call_s", "gather_gpu_fraction_of_copy",
                                       "gather_uva_fraction_of_h2d"}
    # toy sizes on the CPU meet no GPU target: a rate must not pass as a time, nor the reverse
    assert not [name for name, t in results["targets"].items() if t["met"] is not False and "gather" not in name], \
        results["targets"]
    assert (tmp_path / "bench_cuda.png").stat().st_size > 0
    assert "target fused_4096x10_call_s" in capsys.readouterr().out


@needs_gxx
def test_a_failing_section_keeps_the_figures_and_the_next_sections(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch)
    written = []

    def gather_fails(*args):
        written.append(json.loads((tmp_path / "bench_cuda.json").read_text()))  # what a kill here would leave
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(bench, "bench_gather", gather_fails)
    results = run_tiny(bench, tmp_path)
    assert written[0]["check_against_cpu"]["equal"], "figures measured before were not on disk"
    assert results["gather"]["error"].startswith("RuntimeError: CUDA error")
    assert results["lookups"]["valid_ids_per_s"] > 0 and results["targets"]["gather_gpu_fraction_of_copy"]["met"] is None


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_device_check_script_parses():
    run = subprocess.run(["bash", "-n", str(CHECK)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_bench_cpu_reports_only_what_it_measured(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch, "bench_cpu")
    bench.main(["--items", "3000", "--categories", "10", "--batches", "64,128", "--repeats", "2",
                "--memory-mb", "1", "--out", str(tmp_path)])
    text = (tmp_path / "bench_cpu.json").read_text()
    assert "recis" not in text.lower()  # figures of other samplers belong in ARCHITECTURE.md, with provenance
    results = json.loads(text)
    for key in ("sample_ids_64x10", "sample_ids_128x10"):
        r = results[key]
        for name in ("put_back", "no_put_back", "numpy_choice", "torch_multinomial"):
            assert r[name] > 0
        assert r["put_back_x_numpy_choice"] == r["put_back"] / r["numpy_choice"]
    assert results["pack_feature"]["rows"] == 64 * 11 and results["pack_feature"]["MBps"] > 0
    assert results["random_access"]["dependent_1t_loads_per_s"] > 0
    assert len(results["machine"]["load_average"]) == 3
    assert (tmp_path / "bench_cpu.png").stat().st_size > 0


def step_args(script: str, out) -> list[str]:
    """The arguments device_check.sh's step gives bench/<script>, with "$out" given."""
    text = CHECK.read_text().replace("\\\n", " ")
    (line,) = [ln for ln in text.splitlines() if f"bench/{script}" in ln and ln.startswith("step ")]
    words = shlex.split(line.replace('"$out"', str(out)))
    return words[words.index(f"bench/{script}") + 1:]


def node_step_args(out) -> list[str]:
    return step_args("bench_server.py", out)


TINY_ON_THE_EMULATION = ["--device", "emulated", "--results", "shm", "--items", "3000", "--categories", "10",
                         "--batch-size", "64", "--iters", "2", "--clients", "1,2", "--client-timeout", "300"]


@needs_gxx
def test_device_checks_node_server_step_runs_on_the_emulation(tmp_path, monkeypatch):
    """The step's own arguments (a typo there fails here), at toy sizes on the emulated GPU with
    shared-memory results (results='cuda' needs a GPU), 1 and 2 client processes."""
    pytest.importorskip("zmq", reason="the node server needs pyzmq")
    args = node_step_args(tmp_path)
    assert {"--node", "--results", "--clients"} <= set(args) and args[args.index("--clients") + 1] == "1,4"
    bench = load_bench(monkeypatch, "bench_server")
    monkeypatch.setitem(sys.modules, "bench_server", bench)  # spawned clients find client_loop by this name
    bench.main(args + TINY_ON_THE_EMULATION)
    results = json.loads((tmp_path / "bench_server_node.json").read_text())
    assert "error" not in results["start"], results["start"]
    for n in (1, 2):
        fused = results[f"clients_{n}"]["fused"]
        assert fused["calls"] == 2 * n and 0 < fused["p50_ms"] <= fused["p99_ms"], results
    assert results["settings"]["device"] == "emulated" and len(results["machine"]["load_average"]) == 3


@needs_gxx
def test_device_checks_profile_step_runs_on_the_emulation(tmp_path, monkeypatch, capsys):
    """The profile step's own arguments, with toy sizes on the emulated GPU: every call kind
    at every size gets a wall time and its functions by own time."""
    args = step_args("profile_request.py", tmp_path)
    assert args[args.index("--device") + 1] == "cuda"
    bench = load_bench(monkeypatch, "profile_request")
    results = bench.main(args + ["--device", "emulated", "--items", "3000", "--categories", "10",
                                 "--sizes", "64,128", "--calls", "2", "--top", "5"])
    assert json.loads((tmp_path / "profile_request.json").read_text()) == results
    assert results["machine"]["cpus"] > 0 and len(results["machine"]["load_average"]) == 3
    kinds = [k for k in results if k not in ("settings", "device", "machine")]
    assert len(kinds) == 6 and {k.rsplit(" ", 1)[1] for k in kinds} == {"64x10", "128x10"}
    for kind in kinds:
        assert results[kind]["wall_us_per_call"] > 0 and len(results[kind]["top"]) == 5
    assert "us per call" in capsys.readouterr().out


@needs_gxx
def test_cuda_vs_emulation_compares_id_for_id(monkeypatch, capsys):
    """The device check's first GPU step, run with the CPU path in the GPU's place at toy
    sizes: both tail draws of batch-wide exclusion agree with the emulation."""
    from gpu_negsample.backends import exclusion

    heavy = []
    prefix_sums = exclusion.batch_prefix_sums

    def counting(ix, slots, tail_out):  # the CPU path's tails drawn from prefix sums, per call
        heavy.append(sum(bool(exclusion.heavy_tail(ix, seg, tail_out[seg])) for seg in range(tail_out.shape[0])))
        return prefix_sums(ix, slots, tail_out)

    monkeypatch.setattr(exclusion, "batch_prefix_sums", counting)
    assert step_args("cuda_vs_emulation.py", "out") == []
    bench = load_bench(monkeypatch, "cuda_vs_emulation")
    assert bench.main(["--device", "cpu", "--items", "1000", "--categories", "4", "--sizes", "64,2048"])
    assert capsys.readouterr().out.count("IDENTICAL") == 4
    assert max(heavy) > 0, heavy


def test_device_checks_node_server_step_says_it_skipped_without_pyzmq(tmp_path, monkeypatch):
    bench = load_bench(monkeypatch, "bench_server")
    real = importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name, *a: None if name == "zmq" else real(name, *a))
    bench.main(node_step_args(tmp_path))
    results = json.loads((tmp_path / "bench_server_node.json").read_text())
    assert "pyzmq is not installed" in results["skipped"] and "start" not in results


def test_bench_server_answer_runs_at_toy_size(monkeypatch):
    """bench_server_answer.py (the answer path without a socket) runs its three ways; it once
    failed on every run after the server's placement lookup moved, and nothing noticed."""
    results = load_bench(monkeypatch, "bench_server_answer").main(
        ["--items", "3000", "--categories", "10", "--batch-size", "64", "--rounds", "2"])
    assert set(results["median_ms"]) == {"in_process", "copy_after", "in_place"}
    assert all(t > 0 for t in results["median_ms"].values()), results


def test_timeline_instruments_the_current_sampling_kernels(monkeypatch):
    """bench/timeline_sample.py stamps a copy of sample.py's kernels by text substitution:
    a kernel changed so that a stamp no longer fits must fail here, not in a timing run."""
    timeline = load_bench(monkeypatch, "timeline_sample")
    kernels = timeline.instrumented_kernels()
    for kernel in (kernels.sample_put_back, kernels.sample_distinct):
        assert list(inspect.signature(kernel.py_func).parameters)[-3:] == ["meta", "cst", "bst"]
        assert inspect.getsource(kernel.py_func).count("rdtsc()") == 8
