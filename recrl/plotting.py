"""The evaluation-curve figure written by every run."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display on clusters or CI
import matplotlib.pyplot as plt  # noqa: E402


def plot_evaluation_curve(
    curve: list[dict[str, float]],
    baselines: dict[str, dict[str, float]],
    path: Path,
    title: str,
) -> None:
    """Greedy-policy return (with its 95% CI band) against environment frames (against
    optimiser steps for a module that collects none: offline RL), baselines as flat lines."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    by_frames = all("frames" in p for p in curve)
    frames = [p["frames"] if by_frames else p["step"] for p in curve]
    mean = [p["return_mean"] for p in curve]
    ci = [p["return_ci95"] for p in curve]
    ax.plot(frames, mean, marker="o", color="C0", label="agent (greedy)")
    ax.fill_between(
        frames, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)],
        color="C0", alpha=0.2,
    )
    for i, (name, stats) in enumerate(baselines.items(), start=1):
        ax.axhline(stats["return_mean"], color=f"C{i}", linestyle="--", label=name)
    ax.set_xlabel("environment frames" if by_frames else "optimiser steps")
    ax.set_ylabel("mean return (held-out users)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
