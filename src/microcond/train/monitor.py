"""What a run shows while it trains: metrics.jsonl rows and the loss curve (its sample grids:
:mod:`microcond.sample.training_grids`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from microcond.base.files import atomic_path, atomic_write_text


def keep_metrics_through(path: Path, step: int) -> None:
    """Keep the rows of metrics.jsonl up to ``step``, the checkpoint a run resumes from.

    The resumed run logs the later steps again; a line cut short by a kill goes too.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            kept.append(line)
    if kept != lines:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def metrics_line(row: dict) -> str:
    """One line of metrics.jsonl: strict JSON, a non-finite number written as null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}, allow_nan=False)


def plot_loss(metrics_path: Path, out: Path) -> None:
    """Loss against images seen, from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] if metrics_path.exists() else []
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["images_seen"] for r in rows], [math.nan if r["loss"] is None else r["loss"] for r in rows], lw=1)
    ax.set_xlabel("images seen")
    ax.set_ylabel("training loss (MSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title(f"{metrics_path.parent.name}: loss at step {rows[-1]['step']}")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


class TensorBoard:
    """``--log-to tensorboard``: metrics.jsonl's numbers as scalars and the sample grids as images,
    under ``RUN/tensorboard`` (by step; a resumed run drops the events after its checkpoint)."""

    def __init__(self, folder: Path, start: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--log-to tensorboard needs the tensorboard package, which is not installed: pip install tensorboard") from None
        self.writer = SummaryWriter(str(folder), purge_step=start + 1 if start else None)

    def scalars(self, row: dict) -> None:
        for name, value in row.items():
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"train/{name}", value, row["step"])
        self.writer.flush()

    def image(self, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        with Image.open(path) as grid:
            self.writer.add_image("samples", np.asarray(grid.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
