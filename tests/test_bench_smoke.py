"""The benchmarks run end to end at toy sizes: bench_cuda.py on the CPU emulation (its GPU-only
peers are skipped there), so the script the GPU machine runs is known to work before it gets
there; bench_cpu.py reports only figures of its own run."""
import importlib.util
import json
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


def _load_bench(name, monkeypatch):
    path = BENCH_DIR / f"{name}.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: bench/ is on the path
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_cuda_runs_on_the_emulation(tmp_path, capsys, monkeypatch):
    bench = _load_bench("bench_cuda", monkeypatch)
    bench.main(["--device", "emulated", "--items", "3000", "--categories", "10", "--sizes", "64,128",
                "--gather-rows", "500", "--lookup-ids", "1000", "--copy-mib", "1", "--repeats", "2",
                "--out", str(tmp_path)])
    results = json.loads((tmp_path / "bench_cuda.json").read_text())
    assert set(results["sample_ids"]) == {"64x10", "128x10"}
    assert results["sample_ids"]["64x10"]["kernels_per_s"] > 0
    assert results["gather"]["gpu_resident_Bps"] > 0 and results["lookups"]["valid_ids_per_s"] > 0
    assert (tmp_path / "bench_cuda.png").stat().st_size > 0
    assert "target sample_largest_per_s" in capsys.readouterr().out


def test_bench_cpu_reports_only_what_it_measured(tmp_path, monkeypatch):
    bench = _load_bench("bench_cpu", monkeypatch)
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
