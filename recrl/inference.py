"""A trained policy from a run folder, ready to recommend: what batch recommendations
(`recrl.recommend`) and serving read.

A finished policy run saves the weights its final evaluation played
(``checkpoints/policy.pt``: the ``evaluation.select`` choice, a plain state dict); `load_run`
rebuilds the run's module from its composed config (``.hydra/config.yaml``) and loads them with
``torch.load(weights_only=True)``. Items are named by their ids in the run's log (internal
indices ``1..N`` on the synthetic simulator, which has no log).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from recrl.observation import CLICKED, MAX_RATING, PADDING
from recrl.run_folder import (
    LAST_CHECKPOINT, POLICY_WEIGHTS, RESULTS_FILE, checkpoint_path,
)

__all__ = ["RunLoadError", "TrainedPolicy", "load_run"]


class RunLoadError(ValueError):
    """A run folder that cannot be served: names the folder, what is missing and the fix."""


@dataclass
class TrainedPolicy:
    """A run's policy module with its selected weights, and what names its items."""

    module: Any  # a PolicyModule, in eval mode
    cfg: DictConfig
    run_dir: Path
    item_ids: np.ndarray  # [N+1] each item's id in the run's log (index 0: padding)
    popularity: Tensor  # [N+1] what the most-popular fallback ranks (0 at padding)
    checkpoint: Path

    @property
    def num_items(self) -> int:
        return int(self.module.encoder.num_items)

    @property
    def history_length(self) -> int:
        return int(self.module.encoder.history_length)

    def index_of(self) -> dict[Any, int]:
        """Item id -> internal index (1..N)."""
        return {item: index for index, item in enumerate(self.item_ids.tolist()) if index > 0}

    @torch.no_grad()
    def scores(self, history: Tensor, watch_time: Tensor | None = None) -> Tensor:
        """The greedy policy's score of every item after each history ``[B, L]`` (internal ids,
        right-aligned, 0 = padding), ``[B, N+1]``. Every history item counts as chosen by the
        user (``CLICKED``), as logged start histories do; without ``watch_time`` each gets
        ``MAX_RATING``, as an item of a log without ratings does."""
        response = torch.where(history > 0, CLICKED, PADDING)
        if watch_time is None:
            watch_time = torch.where(history > 0, MAX_RATING, 0.0)
        return self.module.item_scores(history, response, watch_time)


def load_run(run_dir: Path | str, *, data_path: str | None = None, checkpoint: str = "policy",
             device: str = "cpu") -> TrainedPolicy:
    """The policy of the run in ``run_dir``, with the weights its final evaluation played
    (``checkpoint="policy"``) or its latest training state (``"last"``).

    ``data_path`` replaces the run's ``data.path`` (the log the simulator was fitted on: it names
    the items) when the run was made elsewhere. Every problem is a `RunLoadError` naming it.
    """
    from recrl.build import build_module

    run_dir = Path(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    if not config_file.is_file():
        raise RunLoadError(f"{run_dir}: not a run folder (no .hydra/config.yaml): pass the folder "
                           f"a `python -m recrl.run` made (outputs/<date>/<time>)")
    if not (run_dir / RESULTS_FILE).is_file():
        raise RunLoadError(f"{run_dir}: the run did not finish (no {RESULTS_FILE}): resume it "
                           f"with `python -m recrl.run hydra.run.dir={run_dir} ckpt_path=last`")
    path = weights_file(run_dir, checkpoint)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: say which, not a pickle trace
        raise RunLoadError(f"{path}: not a readable checkpoint ({type(error).__name__}: "
                           f"{error}); retrain or pass another --checkpoint") from error
    state = state.get("state_dict", state)
    cfg = OmegaConf.load(config_file)
    if data_path is not None:
        cfg.data.path = data_path
    if cfg.algo._target_.endswith("SequencePretrainModule"):
        raise RunLoadError(f"{run_dir}: a pretraining run has no policy to serve; train one from it "
                           f"(encoder.init_from=...)")
    try:
        module, probe_env = build_module(cfg)
    except (FileNotFoundError, ValueError) as error:
        raise RunLoadError(f"{run_dir}: cannot rebuild the run's model: {error}") from error
    missing, unexpected = module.load_state_dict(state, strict=False)
    if [key for key in missing if not key.startswith("loss_module.")] or unexpected:
        raise RunLoadError(f"{path}: its weights do not fit the run's model (missing "
                           f"{missing[:3]}, unexpected {unexpected[:3]}): was the config edited?")
    module.eval().to(device)
    sequences = getattr(probe_env, "sequences", None)
    item_ids = (sequences.item_ids if sequences is not None
                else np.arange(module.encoder.num_items + 1))
    popularity = getattr(probe_env, "logged_popularity", None)
    if popularity is None:
        popularity = module.training_popularity()
    if popularity is None:
        popularity = torch.zeros(module.encoder.num_items + 1)
    return TrainedPolicy(module, cfg, run_dir, item_ids, popularity.detach().float().cpu(), path)


def weights_file(run_dir: Path, checkpoint: str) -> Path:
    """``checkpoints/policy.pt`` or ``checkpoints/last.ckpt``, checked: a missing file or a
    ``last`` that is not what the run evaluated is one clear error."""
    if checkpoint == "policy":
        path = checkpoint_path(run_dir, POLICY_WEIGHTS)
        if not path.is_file():
            raise RunLoadError(
                f"{run_dir}: no checkpoints/{POLICY_WEIGHTS} (the weights the final evaluation "
                f"played; runs before slates existed did not save them): pass --checkpoint last to "
                f"use the latest training state, or rerun")
        return path
    if checkpoint == "last":
        path = checkpoint_path(run_dir, LAST_CHECKPOINT)
        if not path.is_file():
            raise RunLoadError(f"{run_dir}: no checkpoints/{LAST_CHECKPOINT}")
        return path
    raise RunLoadError(f"--checkpoint must be 'policy' or 'last', got {checkpoint!r}")


def run_summary(policy: TrainedPolicy) -> dict[str, Any]:
    """What a served model says about itself: the run, its catalogue, encoder and algorithm."""
    results = json.loads((policy.run_dir / RESULTS_FILE).read_text())
    return {
        "run": str(policy.run_dir),
        "checkpoint": str(policy.checkpoint),
        "algo": policy.cfg.algo._target_.rsplit(".", 1)[-1],
        "env": policy.cfg.env._target_.rsplit(".", 1)[-1],
        "encoder": policy.cfg.encoder._target_.rsplit(".", 1)[-1],
        "num_items": policy.num_items,
        "history_length": policy.history_length,
        "test_return": results.get("agent", {}).get("return_mean"),
    }
