"""Lightning callbacks of recrl."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import TQDMProgressBar

from recrl.data import Sequences
from recrl.evaluation import ITEM_METRICS, SLATE_METRICS, play_users, summarise
from recrl.ranking import evaluate_ranking


class EveryNSteps(L.Callback):
    """Runs ``_evaluate`` before training and every ``every_n_steps`` optimiser steps, keeping
    the points in ``self.curve`` (checkpointed, so a resumed run does not evaluate twice).

    Runs before ModelCheckpoint at the end of a step (Lightning orders checkpoint callbacks
    last): a checkpoint of step k holds step k's point, and a run resumed from it evaluates next
    at step k + every_n_steps, as the uninterrupted run does. The best point and its weights
    (``evaluation.select=best``) are checkpointed with the curve.
    """

    #: The curve point's key that ``evaluation.select=best`` maximises.
    score_key: str

    def __init__(self, every_n_steps: int, keep_best: bool) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"evaluation.every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.keep_best = keep_best
        self.curve: list[dict[str, float]] = []
        #: ``{"point": curve point, **_snapshot(...)}`` of the best evaluation so far.
        self.best: dict[str, Any] | None = None
        #: Wall-clock seconds this process spent in these evaluations (results.json's
        #: validation_time_s: what the evaluation cadence costs a run).
        self.seconds = 0.0

    def _evaluate(self, trainer: L.Trainer, pl_module: Any) -> None:
        raise NotImplementedError

    def _timed_evaluate(self, trainer: L.Trainer, pl_module: Any) -> None:
        started = time.perf_counter()
        self._evaluate(trainer, pl_module)
        self.seconds += time.perf_counter() - started

    def _snapshot(self, pl_module: Any) -> dict[str, Any]:
        """What ``evaluation.select=best`` needs to restore this point's model later."""
        raise NotImplementedError

    def _add_point(self, point: dict[str, float], pl_module: Any) -> None:
        """Appends an evaluation to the curve; with ``keep_best``, a point strictly higher than
        the best so far keeps a snapshot (on a tie the earlier, less trained, weights stay)."""
        self.curve.append(point)
        if self.keep_best and (self.best is None
                               or point[self.score_key] > self.best["point"][self.score_key]):
            self.best = {"point": dict(point), **self._snapshot(pl_module)}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if not self.curve:  # not again when resuming
            self._timed_evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self._timed_evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        # The final weights always have a validation point (what a sweep's objective and the
        # selection of weights read), also when max_steps is not a multiple of every_n_steps.
        if not self.curve or self.curve[-1]["step"] != trainer.global_step:
            self._timed_evaluate(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"curve": self.curve, "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.curve = list(state_dict["curve"])
        self.best = state_dict.get("best")


def cpu_copy(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies: kept weights must not follow training on."""
    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in tensors.items()}


class PeriodicEvaluation(EveryNSteps):
    """Evaluates the greedy policy on validation users every ``every_n_steps`` optimiser steps.

    The validation users are the same at every evaluation (one fixed seed, distinct from the
    training seed and from the final evaluation's test users), so the curve shows the policy
    changing, not the users, and choosing weights by it does not touch the test users. Logs
    ``val/*`` against the optimiser step, with the environment frame count as ``val/frames``, and
    keeps the curve (``self.curve``) for the run's plot. Evaluates once before training starts
    and once more at the end if the last step is not on the grid.

    With ``keep_best`` it also keeps a copy of the weights with the highest validation return so
    far (``self.best``; checkpointed, so a resumed run still knows them): the model selection of
    ``evaluation.select=best``.

    Under DDP rank 0 plays the users and sends the episodes to the other ranks
    (``recrl.evaluation.play_users``): every rank holds the same curve and best weights (DDP
    keeps the weights equal), the same as a one-process run's, and rank 0 logs.
    """

    score_key = "return_mean"

    def __init__(self, every_n_steps: int, num_users: int, seed: int, max_steps: int,
                 keep_best: bool = False) -> None:
        super().__init__(every_n_steps, keep_best)
        self.num_users = num_users
        self.seed = seed
        self.max_steps = max_steps

    def _snapshot(self, pl_module: Any) -> dict[str, Any]:
        return pl_module.selection_snapshot()

    def _evaluate(self, trainer: L.Trainer, pl_module: Any) -> None:
        # Eval mode, as in the final evaluation: no dropout noise, and the global RNG (which
        # training draws from, and which checkpoints save) is left alone.
        was_training = pl_module.training
        pl_module.eval()
        try:
            # Every rank asks (the hook may be a collective); rank 0's env uses it for novelty
            # where the simulator has no log (recrl.evaluation.popularity_reference).
            popularity = pl_module.training_popularity()
            metrics = summarise(play_users(
                lambda num_users, seed: pl_module.make_env(num_users, seed=seed, split="validation"),
                lambda env: pl_module.greedy_policy,
                num_users=self.num_users, seed=self.seed, max_steps=self.max_steps,
                training_popularity=popularity,
            ))
        finally:
            pl_module.train(was_training)
        point = {"step": trainer.global_step, **pl_module.progress(), **metrics}
        self._add_point(point, pl_module)
        # Straight to the loggers, one row per evaluation at its true step: self.log from a
        # callback would be re-logged at every logging step and aggregated per epoch.
        val_metrics = {
            "val/return": metrics["return_mean"],
            "val/return_ci95": metrics["return_ci95"],
            "val/clicks": metrics["clicks_mean"],
            "val/ctr": metrics["ctr"],
            "val/episode_length": metrics["episode_length"],
            **{f"val/{key}": metrics[key] for key in (*ITEM_METRICS, *SLATE_METRICS)
               if key in metrics},
        }
        if "frames" in point:
            val_metrics["val/frames"] = float(point["frames"])
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(val_metrics, step=trainer.global_step)
        if trainer.progress_bar_callback is not None:
            frames = f"  frames {point['frames']:>8}" if "frames" in point else ""
            trainer.progress_bar_callback.print(
                f"step {point['step']:>6}{frames}  "
                f"val/return {metrics['return_mean']:7.1f} ± {metrics['return_ci95']:.1f}"
            )


class RankingValidation(EveryNSteps):
    """Full-ranking HR@10 / NDCG@10 of the validation items while pretraining, every N steps.

    A fixed, seeded sample of ``num_users`` users (all of them when there are fewer), ranked on
    their leave-one-out *validation* item (the test item is kept for the final numbers). Logs
    ``val/HR@10`` and ``val/NDCG@10`` straight to the loggers, like `PeriodicEvaluation`.
    ``heldout_only`` samples the log's validation users only: when pretraining trains on the
    other users' validation items, theirs would not measure anything.

    With ``keep_best`` it also keeps a copy of the weights with the highest validation HR@10 so
    far (``self.best``; checkpointed): ``evaluation.select=best``, early stopping's choice
    without stopping, for an objective that overfits a small log (SASRec's on ML-100K).
    """

    score_key = "HR@10"

    def __init__(self, sequences: Sequences | None, every_n_steps: int, num_users: int,
                 seed: int, heldout_only: bool = False, keep_best: bool = False) -> None:
        super().__init__(every_n_steps, keep_best)
        if sequences is None:
            raise ValueError("ranking validation needs the logged sequences of a logged-data env")
        pool = (sequences.users_of("validation") if heldout_only
                else torch.arange(sequences.num_users))
        if pool.numel() == 0:
            raise ValueError("no validation users to validate on: raise "
                             "data.validation_user_fraction or set "
                             "algo.train_on_validation_item=false")
        generator = torch.Generator().manual_seed(seed)
        users = pool[torch.randperm(pool.numel(), generator=generator)[:num_users]]
        self.users = users.sort().values
        self.sequences = sequences

    def _snapshot(self, pl_module: Any) -> dict[str, Any]:
        return {"weights": cpu_copy(pl_module.state_dict())}  # the whole module: every head

    def _evaluate(self, trainer: L.Trainer, pl_module: Any) -> None:
        was_training = pl_module.training
        pl_module.eval()
        metrics = evaluate_ranking(
            pl_module.item_scores, self.sequences, history_length=pl_module.encoder.history_length,
            target="valid", users=self.users, ks=(10,), protocols=("full",),
            device=pl_module.device,
        )["full"]
        pl_module.train(was_training)
        self._add_point({"step": trainer.global_step, **metrics}, pl_module)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics({f"val/{k}": v for k, v in metrics.items()},
                                   step=trainer.global_step)
        if trainer.progress_bar_callback is not None:
            trainer.progress_bar_callback.print(
                f"step {trainer.global_step:>6}  val/HR@10 {metrics['HR@10']:.4f}  "
                f"val/NDCG@10 {metrics['NDCG@10']:.4f}"
            )


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimiser steps towards ``max_steps``, redrawn at most every
    ``min_interval`` seconds (and at the last step).

    The training stream is endless (``max_steps`` ends it), so the default bar has no total;
    this one shows how far the run is. Lightning redraws its bar after every step (~0.4 ms on
    the CPU, ~0.5% of a small DQN update), many times a second, which nobody reads.
    """

    def __init__(self, min_interval: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.min_interval = min_interval
        self._last_drawn = -math.inf

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("Training")
        # Pretraining's loader has epochs: the bar goes on counting steps, not batches of one.
        self.train_progress_bar.n = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = time.monotonic()
        if now - self._last_drawn < self.min_interval and trainer.global_step < trainer.max_steps:
            return
        self._last_drawn = now
        super().on_train_batch_end(trainer, pl_module, outputs, batch, trainer.global_step - 1)
