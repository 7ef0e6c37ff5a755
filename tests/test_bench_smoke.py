"""bench/bench_cuda.py runs end to end on the CPU emulation at toy sizes (its GPU-only peers
are skipped there), so the script the GPU machine runs is known to work before it gets there."""
import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_cuda.py"


def test_bench_cuda_runs_on_the_emulation(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH.parent))  # as when run as a script: bench/ is on the path
    spec = importlib.util.spec_from_file_location("bench_cuda", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--device", "emulated", "--items", "3000", "--categories", "10", "--sizes", "64,128",
                "--gather-rows", "500", "--lookup-ids", "1000", "--copy-mib", "1", "--repeats", "2",
                "--out", str(tmp_path)])
    results = json.loads((tmp_path / "bench_cuda.json").read_text())
    assert set(results["sample_ids"]) == {"64x10", "128x10"}
    assert results["sample_ids"]["64x10"]["kernels_per_s"] > 0
    assert results["gather"]["gpu_resident_Bps"] > 0 and results["lookups"]["valid_ids_per_s"] > 0
    assert (tmp_path / "bench_cuda.png").stat().st_size > 0
    assert "target sample_largest_per_s" in capsys.readouterr().out
