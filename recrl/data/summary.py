"""The data summary: what a run on logged data read, what each filter kept, every decision taken.

A log recrl has never seen can change meaning on the way in (ratings rescaled, blank or duplicate
rows dropped, a timestamp column that is not there); each such decision is recorded here, so it is
never silent. ``Sequences.summary`` holds it as a plain dict (JSON-ready: the run can write it into
``results.json``), and ``log_summary`` prints it through the ``recrl.data`` logger (Hydra's job
logging writes it to the run's ``run.log`` and the console).

The dict's keys:

- ``path``, ``format``: the log (added by ``load_sequences``);
- ``read``: how the file was read (``RawLog.details``: id kinds, time kind, columns used);
- ``ratings``: ``used``, the ``column``, the raw ``range``, the ``rating_scale`` mapped to 0-5 (or
  None), ``blank`` ratings and their rule, ``min_rating`` and whether it applied;
- ``duplicates``: rows sharing user, item and time (``found``) and the ``rule``;
- ``steps``: users, items and interactions after each step (``read``, ``blank_ratings``,
  ``duplicates``, ``min_rating``, ``k_core``);
- ``split``: the sizes of the user split (``split_sizes``);
- ``taste_model``: added by the logged-data simulator after its fit (recrl/envs/logged.py);
- ``warnings``: one line per decision that changed the data or a world that looks degenerate.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from recrl.data.preprocess import Sequences

log = logging.getLogger("recrl.data")

#: The preprocessing steps counted in ``summary["steps"]``, in order, and how the log names them.
STEP_NAMES = {"read": "read", "blank_ratings": "blank ratings", "duplicates": "duplicates",
              "min_rating": "min_rating", "k_core": "k-core"}


def count_step(step: str, frame: pd.DataFrame) -> dict[str, Any]:
    """Users, items and interactions of ``frame`` after ``step`` (one of ``STEP_NAMES``)."""
    return {"step": step, "users": int(frame["user"].nunique()),
            "items": int(frame["item"].nunique()), "interactions": len(frame)}


def split_sizes(sequences: Sequences) -> dict[str, int]:
    """The three-way user split's sizes: training, validation and test users."""
    return {f"{split}_users" if split != "train" else "training_users":
            int(sequences.users_of(split).numel()) for split in ("train", "validation", "test")}


def _steps_table(steps: list[dict[str, Any]]) -> list[str]:
    rows = [f"    {'step':<14}{'users':>10}{'items':>10}{'interactions':>14}"]
    rows += [f"    {STEP_NAMES.get(s['step'], s['step']):<14}{s['users']:>10,}{s['items']:>10,}"
             f"{s['interactions']:>14,}" for s in steps]
    return rows


def _ratings_line(ratings: dict[str, Any]) -> str:
    if not ratings.get("used"):
        return "  ratings: none (every row is an interaction; the taste model is logistic MF)"
    low, high = ratings["range"]
    scale = ratings.get("rating_scale")
    mapped = (f"mapped linearly from data.rating_scale={list(scale)} onto 0-5" if scale
              else "used as they are (the simulator's scale is 0-5)")
    return f"  ratings: column {ratings['column']!r}, {low:g} to {high:g}, {mapped}"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The summary as the lines ``log_summary`` prints."""
    read = summary.get("read", {})
    lines = [f"data summary: {summary.get('path', '?')} (data.format={summary.get('format', '?')})",
             f"  ids: users {read.get('user_ids', '?')}, items {read.get('item_ids', '?')}; "
             f"time order: {read.get('timestamps', '?')}"]
    ratings = summary.get("ratings", {})
    lines.append(_ratings_line(ratings))
    if ratings.get("used"):
        lines.append(f"  blank ratings: {ratings['blank']:,} (data.blank_ratings="
                     f"{ratings['blank_rule']})")
    duplicates = summary.get("duplicates", {})
    lines.append(f"  duplicate rows (same user, item, time): {duplicates.get('found', 0):,} "
                 f"(data.duplicates={duplicates.get('rule', '?')})")
    if ratings.get("min_rating") is not None:
        applied = "applied" if ratings.get("min_rating_applied") else "ignored: no ratings"
        lines.append(f"  min_rating: {ratings['min_rating']:g} ({applied})")
    lines += ["  users / items / interactions after each step:", *_steps_table(summary["steps"])]
    if "split" in summary:
        sizes = (f"{v:,} {k.replace('_', ' ').replace('heldout', 'held-out')}"
                 for k, v in summary["split"].items())
        lines.append("  split: " + ", ".join(sizes))
    return lines


def log_summary(summary: dict[str, Any]) -> None:
    """Prints the summary at INFO and each of its warnings at WARNING (``recrl.data``)."""
    for line in summary_lines(summary):
        log.info(line)
    for warning in summary.get("warnings", []):
        log.warning(warning)
