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
