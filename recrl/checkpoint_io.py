"""Checkpoint files: atomic writes, finding and checking the one ``ckpt_path=`` names, and
``metrics.csv`` across a resume (docs/resuming.md).

What a recrl checkpoint holds beyond Lightning's own (model with the DQN target network and the
exploration schedule, optimiser, LR scheduler, loop counters, callback states): under
``RESUME_KEY``, the training stream's position (the simulator's full state and random generator,
the collector's next observation, the batches Lightning had already fetched but not trained on,
the global RNG states (torch, numpy, Python), where the algorithm stood inside the current
rollout) and the algorithm's own state (DQN: the replay buffer and the target-update counter),
made plain by `recrl.torchrl_state`. Everything is plain tensors, numbers, strings, lists and
dicts, so every checkpoint loads with ``torch.load(weights_only=True)``.

Pieces:

- `AtomicCheckpointIO`: Lightning writes every checkpoint beside its target, flushes it to disk and
  renames it over the target: a crash during a write leaves the previous checkpoint intact.
- `resolve_ckpt_path`, `read_checkpoint`, `check_compatible`: what ``ckpt_path=`` is checked with
  before training starts (`CheckpointError` names the file and the fix).
- `set_aside_csv_metrics`, `merge_csv_metrics`: a resumed run's ``metrics.csv`` keeps the
  interrupted run's rows up to the checkpoint.
"""

from __future__ import annotations

import csv
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from recrl.run_folder import LAST_CHECKPOINT, checkpoint_path

#: Top-level key of a Lightning checkpoint under which recrl keeps its resume state.
RESUME_KEY = "recrl_resume"


# -- atomic writes ----------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``<path>.tmp``, flushes it to disk, then renames it to ``path`` (atomic on POSIX).

    A reader, or a run resumed after a crash, sees the previous complete checkpoint or the new
    complete one, never a partial file. Remote URLs (``s3://`` ...) keep Lightning's own writer.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Makes a rename durable (the directory entry); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- reading a checkpoint to resume from ------------------------------------------------------
class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the fix."""


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """``ckpt_path`` of the config as a file: ``last`` is this run folder's last checkpoint."""
    if ckpt_path is None or str(ckpt_path).strip() in ("", "null", "None"):
        return None
    if str(ckpt_path) == "last":
        path = checkpoint_path(output_dir, LAST_CHECKPOINT)
        if not path.is_file():
            raise CheckpointError(
                f"ckpt_path=last: no checkpoint at {path}; resume by rerunning the interrupted "
                "run's command with hydra.run.dir=<its run folder> ckpt_path=last, or give "
                "ckpt_path=<a .ckpt file>"
            )
        return path
    path = Path(str(ckpt_path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path}: no such file; give the path of a .ckpt file")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Loads ``path`` with ``weights_only=True`` (tensors and plain containers only, no code).

    Any failure (a truncated or foreign file, an object that is not plain data) becomes one
    `CheckpointError` line naming the file.
    """
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every way of failing gets the same one-line answer
        # The first sentence only: torch's messages go on for lines.
        first_line = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:160]
        if "Weights only load failed" in str(err):
            reason = "it holds objects other than tensors and plain data (refused: weights_only)"
        else:
            reason = f"it is truncated or not a checkpoint ({type(err).__name__}: {first_line})"
        raise CheckpointError(
            f"ckpt_path={path}: cannot read the checkpoint: {reason}; resume from another "
            "checkpoint (e.g. an earlier copy) or start a new run without ckpt_path"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"ckpt_path={path}: not a Lightning checkpoint of recrl (no state_dict); give a "
            "checkpoints/*.ckpt file of a recrl run"
        )
    return checkpoint


def check_compatible(checkpoint: Mapping[str, Any], module: L.LightningModule, path: Path) -> None:
    """The checkpoint was written by a run of the same model and algorithm settings.

    A setting that recrl added after the checkpoint was written counts as unchanged while it has
    its default value (the behaviour the checkpoint was trained with).
    """
    saved = checkpoint.get("hyper_parameters") or {}
    current = dict(module.hparams)
    defaults = {name: parameter.default for name, parameter
                in inspect.signature(type(module).__init__).parameters.items()
                if parameter.default is not inspect.Parameter.empty}
    changed = [
        f"algo.{key}={saved[key]!r} in the checkpoint, {current.get(key)!r} now" if key in saved
        else f"algo.{key}={current.get(key)!r} is not in the checkpoint (older recrl: default "
             f"{defaults.get(key)!r})"
        for key in sorted(set(saved) | set(current))
        if saved.get(key, defaults.get(key)) != current.get(key)
    ]
    if changed:
        raise CheckpointError(
            f"ckpt_path={path} was written with other algorithm settings ({'; '.join(changed[:4])}); "
            "resume with the command of the run that wrote it"
        )
    own = module.state_dict()
    state = checkpoint["state_dict"]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    reshaped = sorted(k for k in set(own) & set(state)
                      if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or reshaped:
        detail = (f"missing {missing[:3]}" if missing else
                  f"unexpected {unexpected[:3]}" if unexpected else
                  f"other shapes for {reshaped[:3]}")
        raise CheckpointError(
            f"ckpt_path={path} holds another model ({detail}): the env or encoder settings differ; "
            "resume with the command of the run that wrote it"
        )


# -- metrics.csv across a resume -------------------------------------------------------------
def set_aside_csv_metrics(loggers: list[Any]) -> list[tuple[Path, Path]]:
    """Moves each CSV logger's ``metrics.csv`` aside before a resumed run starts (Lightning's CSV
    writer deletes an existing one); `merge_csv_metrics` puts the history back afterwards."""
    from lightning.pytorch.loggers import CSVLogger

    moved = []
    for logger in loggers:
        if isinstance(logger, CSVLogger):
            path = Path(logger.log_dir) / "metrics.csv"
            if path.is_file():
                aside = path.with_name("metrics.before_resume.csv")
                os.replace(path, aside)
                moved.append((aside, path))
    return moved


def _logged_step(row: dict[str, str]) -> int:
    """The optimiser step a metrics.csv row belongs to: Lightning writes ``train/*`` rows with
    ``step`` = that step - 1, the evaluation callbacks write ``val/*`` rows at the step itself."""
    step = int(float(row["step"]))
    return step + 1 if any(v for k, v in row.items() if k.startswith("train/")) else step


def merge_csv_metrics(moved: list[tuple[Path, Path]], resumed_step: int) -> None:
    """``metrics.csv`` = the interrupted run's rows up to the checkpoint's step, then the resumed
    run's rows (the steps after the checkpoint were trained again)."""
    for aside, path in moved:
        with open(aside, newline="") as f:
            old = [row for row in csv.DictReader(f)
                   if not row.get("step") or _logged_step(row) <= resumed_step]
        new: list[dict[str, str]] = []
        if path.is_file():
            with open(path, newline="") as f:
                new = list(csv.DictReader(f))
        columns: list[str] = []
        for row in old + new:
            columns.extend(k for k in row if k not in columns)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(old + new)
        os.replace(tmp, path)
        aside.unlink()
