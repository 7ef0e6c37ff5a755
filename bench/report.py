"""What every benchmark does with its results: a JSON file and a PNG plot in the output folder."""
from __future__ import annotations

import json
import os


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
