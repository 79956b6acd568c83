"""How sweeps and W&B runs are named: what the training side (recrl/tracking.py) writes and the
post-run tools (recrl/report.py) read, kept in one place that imports neither."""

from __future__ import annotations

from pathlib import Path

#: WANDB_MODE values in which W&B never contacts the server: no login is needed.
LOCAL_MODES = ("offline", "dryrun", "disabled")


def override_key(override: str) -> str:
    """``algo.lr`` of ``algo.lr=0.001``, ``+algo.lr=...`` and ``~algo.lr``."""
    return override.split("=", 1)[0].lstrip("+~")


def sweep_group(sweep_dir: str | Path) -> str:
    """The W&B group of a sweep's runs (recrl/tracking.py): the sweep folder's last two parts,
    unique in the default layout (``outputs/multirun/<date>/<time>``), readable in a named one."""
    return "/".join(Path(sweep_dir).resolve().parts[-2:])
