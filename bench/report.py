"""What every benchmark does with its results: a JSON file and a PNG plot in the output folder."""
from __future__ import annotations

import contextlib
import json
import os
import platform
import traceback


def save(results: dict, out_dir: str, name: str, plot) -> None:
    """Write results to out_dir/name.json and plot(results, pyplot) -> figure to out_dir/name.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    json_path, png_path = os.path.join(out_dir, f"{name}.json"), os.path.join(out_dir, f"{name}.png")
    with open(json_path, "w") as f:
        json.dump(results, f, indent=2)
    fig = plot(results, plt)
    fig.tight_layout()
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    print(f"wrote {json_path} and {png_path}")


def describe_machine() -> dict:
    """What a figure was measured on: CPU model and count, library versions, and the load
    average when asked (other work on a shared machine moves the figures)."""
    import numba
    import numpy as np
    import torch

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return {
        "host": platform.node(), "platform": platform.platform(), "processor": model, "cpus": os.cpu_count(),
        "numba_threads": numba.get_num_threads(), "numba": numba.__version__, "numpy": np.__version__,
        "torch": torch.__version__, "python": platform.python_version(), "load_average": load_average(),
    }


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (what else ran on the machine meanwhile)."""
    return [round(x, 2) for x in os.getloadavg()]


class Figures(dict):
    """One section of the results: every figure stored in it is written to disk at once."""

    def __init__(self, flush):
        super().__init__()
        self._flush = flush

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self._flush()


class Run:
    """The results of one run, kept in <out>/<name>.json as they grow."""

    def __init__(self, out: str, name: str):
        os.makedirs(out, exist_ok=True)
        self.path = os.path.join(out, f"{name}.json")
        self.results: dict = {}

    def flush(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.results, f, indent=2)
        os.replace(tmp, self.path)  # a reader (or a kill) never sees half a file

    @contextlib.contextmanager
    def section(self, name: str):
        figures = self.results[name] = Figures(self.flush)
        try:
            yield figures
        except Exception as e:  # one failing benchmark must not cost the others' figures
            traceback.print_exc()
            figures["error"] = f"{type(e).__name__}: {e}"
        finally:
            self.flush()
