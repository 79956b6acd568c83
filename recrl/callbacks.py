"""Lightning callbacks of recrl."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import TQDMProgressBar

from recrl.evaluation import evaluate_policy


class PeriodicEvaluation(L.Callback):
    """Evaluates the greedy policy on held-out users every ``every_n_steps`` optimiser steps.

    The held-out users are the same at every evaluation (one fixed seed, distinct from the
    training seed), so the curve shows the policy changing, not the users. Logs ``val/*``
    against the optimiser step, with the environment frame count as ``val/frames``, and keeps the
    curve (``self.curve``) for the run's plot. Also evaluates once before training starts.
    """

    def __init__(self, every_n_steps: int, num_users: int, seed: int, max_steps: int) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"evaluation.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.num_users = num_users
        self.seed = seed
        self.max_steps = max_steps
        self.curve: list[dict[str, float]] = []

    def _evaluate(self, trainer: L.Trainer, pl_module: Any) -> None:
        env = pl_module.make_env(self.num_users, seed=self.seed, split="heldout")
        metrics = evaluate_policy(env, pl_module.greedy_policy, max_steps=self.max_steps)
        point = {"step": trainer.global_step, "frames": int(pl_module.frames), **metrics}
        self.curve.append(point)
        # Straight to the loggers, one row per evaluation at its true step: self.log from a
        # callback would be re-logged at every logging step and aggregated per epoch.
        val_metrics = {
            "val/return": metrics["return_mean"],
            "val/return_ci95": metrics["return_ci95"],
            "val/clicks": metrics["clicks_mean"],
            "val/ctr": metrics["ctr"],
            "val/episode_length": metrics["episode_length"],
            "val/coverage": metrics["coverage"],
            "val/frames": float(point["frames"]),
        }
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(val_metrics, step=trainer.global_step)
        if trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.print(
                f"step {point['step']:>6}  frames {point['frames']:>8}  "
                f"val/return {metrics['return_mean']:7.1f} ± {metrics['return_ci95']:.1f}"
            )

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not self.curve:  # not again when resuming
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict["curve"])


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimiser steps towards ``max_steps``.

    The training stream is endless (``max_steps`` ends it), so the default bar has no total;
    this one shows how far the run is.
    """

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("Training")
