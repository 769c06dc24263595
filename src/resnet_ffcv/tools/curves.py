"""``resnet-ffcv curves RUN_DIR [RUN_DIR ...] --output curves.png``: a run's curves from its ``metrics.csv``.

Loss, top-1 (raw solid, EMA dashed), learning rate, resolution and images/s against the optimizer step, one colour
per run directory, so two runs compare on the same axes. Needs no W&B: the file is what MetricsCSV appends.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from resnet_ffcv.callbacks.metrics_csv import read_metrics
from resnet_ffcv.run_dir import METRICS_NAME

# Panel title -> (metric names, first present wins per line style); each tuple entry is one line.
PANELS: dict[str, list[tuple[str, ...]]] = {
    "train loss": [("train/loss_step", "train/loss")],
    "val top-1 (raw solid, EMA dashed)": [("val/acc1",), ("val/acc1_ema",)],
    "learning rate": [("train/lr",)],
    "train resolution (px)": [("train/resolution",)],
    "images/s": [("images_per_sec", "train/samples_per_sec")],
    "val loss (raw solid, EMA dashed)": [("val/loss",), ("val/loss_ema",)],
}
STYLES = ("-", "--")


def metrics_file(run: str | Path) -> Path:
    """``RUN/metrics.csv``, or RUN itself when it is a CSV file; a clear error when neither exists."""
    path = Path(run)
    path = path if path.suffix == ".csv" else path / METRICS_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no metrics file (expected a run directory written by `resnet-ffcv fit --run_dir DIR`, "
            "or a metrics.csv path)"
        )
    return path


def draw_curves(runs: list[str | Path], output: str | Path) -> Path:
    """Draws the panels for ``runs`` into the PNG ``output``; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a training machine
    import matplotlib.pyplot as plt

    names = [Path(run).name for run in runs]
    labels = names if len(set(names)) == len(names) and all(names) else [str(run) for run in runs]
    series = [(label, read_metrics(metrics_file(run))) for label, run in zip(labels, runs, strict=True)]
    figure, axes = plt.subplots(2, 3, figsize=(13, 7), constrained_layout=True)
    for axis, (title, lines) in zip(axes.flat, PANELS.items(), strict=True):
        for index, (label, metrics) in enumerate(series):
            colour = f"C{index}"
            for style, names in zip(STYLES, lines, strict=False):
                name = next((name for name in names if metrics.get(name)), None)
                if name is None:
                    continue
                steps = sorted(metrics[name])
                axis.plot(steps, [metrics[name][step] for step in steps], style, color=colour, label=f"{label}: {name}")
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7)
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes, color="grey")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=80)
    plt.close(figure)
    return output


def curves_command(argv: list[str]) -> int | None:
    """``resnet-ffcv curves``: parses ``argv`` and writes the PNG; a missing file is one line and exit 2."""
    parser = argparse.ArgumentParser(
        prog="resnet-ffcv curves",
        description="Loss, top-1 (raw/EMA), LR, resolution and images/s from RUN_DIR/metrics.csv as a PNG; "
        "give two run directories to compare them on the same axes.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="a run directory (or its metrics.csv)")
    parser.add_argument("-o", "--output", default="curves.png", help="the PNG to write (default: curves.png)")
    args = parser.parse_args(argv)
    try:
        path = draw_curves(args.runs, args.output)
    except FileNotFoundError as error:
        parser.exit(2, f"resnet-ffcv curves: error: {error}\n")
    print(f"curves of {', '.join(args.runs)} written to {path}")
    return None
