"""Callbacks that stop a run cleanly: on a signal, or on a NaN or inf (docs/resuming.md).

- `RunControl`: on SIGTERM / SIGINT, training stops at the end of the current optimiser step,
  saves ``checkpoints/last.ckpt`` and raises `RunInterrupted` (the run folder is marked FAILED
  with the command that resumes it). Test-only, it can also pause at a given step
  (``callbacks.run_control.pause_at_step``, marked by `PAUSED_FILE`).
- `NonFiniteGuard`: a NaN or inf in a loss term or a gradient stops the run before the optimiser
  applies it, after saving the last good state to ``checkpoints/last_good.ckpt``
  (`NonFiniteError` names the quantity and the step).

What a checkpoint holds and how it is written and read is `recrl.checkpoint_io`'s.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from torch import Tensor
from torch.nn.utils import get_total_norm

from recrl.run_folder import PAUSED_FILE



# -- stopping on a signal ---------------------------------------------------------------------
class RunInterrupted(Exception):
    """Training stopped on SIGTERM / SIGINT after saving a checkpoint to resume from."""

    def __init__(self, signum: int, step: int, checkpoint: Path) -> None:
        self.signum = signum
        self.step = step
        self.checkpoint = checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name} after optimiser step {step}; "
                         f"checkpoint saved to {checkpoint}")


class RunControl(Checkpoint):
    """SIGTERM / SIGINT during training: finish the current optimiser step, save
    ``last_checkpoint``, raise `RunInterrupted`. A second signal ends the process at once.

    A ``Checkpoint`` callback so that Lightning runs it after the other callbacks (evaluation,
    ModelCheckpoint) at the end of a step: the checkpoint it writes is the state a periodic one
    of the same step would hold. Before training starts (imports, setup, first evaluation) and
    after it ends the usual handlers apply.

    ``pause_at_step`` is test-only (``callbacks.run_control.pause_at_step``): after that step's
    callbacks, write ``<run folder>/PAUSED`` and wait for a signal, so that a test can kill the
    run at a known point of training.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, last_checkpoint: Path, pause_at_step: int | None = None,
                 run_dir: Path | None = None) -> None:
        super().__init__()
        self.last_checkpoint = Path(last_checkpoint)
        self.pause_at_step = pause_at_step
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:  # asked twice: end the process now, without a checkpoint
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        self.received = signum

    def _install_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._install_handlers()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.pause_at_step is not None and trainer.global_step == self.pause_at_step:
            self._pause(trainer)
        if self.received is None and trainer.received_sigterm:  # came before our handler
            self.received = signal.SIGTERM
        stop = self.received is not None
        if trainer.world_size > 1:  # every rank stops at the same step (saving is collective)
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            signum = self.received if self.received is not None else signal.SIGTERM
            trainer.save_checkpoint(self.last_checkpoint, weights_only=False)
            self._restore_handlers()
            raise RunInterrupted(signum, trainer.global_step, self.last_checkpoint)

    def _pause(self, trainer: L.Trainer) -> None:
        if self.run_dir is not None and trainer.is_global_zero:
            (self.run_dir / PAUSED_FILE).write_text(f"{trainer.global_step}\n")
        while self.received is None:
            time.sleep(0.05)

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._restore_handlers()

    def teardown(self, trainer: L.Trainer, pl_module: Any, stage: str) -> None:
        self._restore_handlers()


# -- non-finite losses and gradients ----------------------------------------------------------
class NonFiniteError(Exception):
    """A NaN or inf in a loss term or a gradient; the update was not applied."""

    def __init__(self, what: str, value: str, step: int, checkpoint: Path | None) -> None:
        self.what = what
        self.step = step
        self.checkpoint = checkpoint
        message = f"{what} is {value} at optimiser step {step}"
        if checkpoint is not None:
            message += f"; the last good state (after step {step - 1}) is in {checkpoint}"
        super().__init__(message)


def _describe(tensor: Tensor) -> str:
    return "nan" if bool(torch.isnan(tensor).any()) else "inf"


def _first_non_finite(losses: dict[str, Tensor], pl_module: Any) -> tuple[str, str] | None:
    """What `NonFiniteError` names: the first loss term holding a NaN or inf (in the order they
    were logged), else the first parameter whose gradient does, with "nan" or "inf"; None when
    every value is finite. Tensor by tensor: run only once the total is not finite."""
    for name, value in losses.items():
        if not bool(torch.isfinite(value).all()):
            return name, _describe(value)
    for name, param in pl_module.named_parameters():
        if param.grad is not None and not bool(param.grad.isfinite().all()):
            return f"the gradient of {name}", _describe(param.grad)
    return None


class NonFiniteGuard(L.Callback):
    """Checks the step's loss terms and the gradients of the optimiser's parameters before it
    applies them: one total of each every step, the culprit sought tensor by tensor (by
    parameter name) only when one is not finite. The gradients' total is the 2-norm that
    gradient clipping scales by: the module gets it (``step_gradient_norm``) rather than
    summing the same gradients again.

    The loss terms are the ones the module recorded in ``step_losses`` (``RecommenderModule``
    records ``train/td_loss``, ``train/loss``, ...). On a NaN or inf: save ``last_good`` (the
    weights, optimiser and counters are still those of the previous step) and raise
    `NonFiniteError`. Steps count from 1: the error at step k leaves the state after k - 1 steps.

    ``inject_nan_at_step`` is test-only (``callbacks.non_finite_guard.inject_nan_at_step``): that
    step's response embeddings are multiplied by NaN, so the NaN travels the real path (tokens,
    loss, then gradients) in every algorithm.
    """

    def __init__(self, last_good: Path | None, inject_nan_at_step: int | None = None) -> None:
        super().__init__()
        self.last_good = None if last_good is None else Path(last_good)
        self.inject_nan_at_step = inject_nan_at_step
        self._hook = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.inject_nan_at_step is not None and trainer.global_step + 1 == self.inject_nan_at_step:
            # On the response embedding, which every encoder's tokens go through, in RL and in
            # pretraining (which contextualises tokens without the encoder's forward).
            self._hook = pl_module.encoder.response_embedding.register_forward_hook(_times_nan)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self._remove_hook()
        step = trainer.global_step + 1
        losses = getattr(pl_module, "step_losses", {}) or {}
        if hasattr(pl_module, "step_losses"):
            pl_module.step_losses = {}
        # The gradients the optimiser is about to apply: its parameter list is at hand, where
        # walking the module tree for them (parameters()) cost as much as the check itself.
        params = [p for group in optimizer.param_groups for p in group["params"]
                  if p.grad is not None]
        # One total of the gradients and one of the loss terms, one host sync: a NaN or inf
        # anywhere makes them non-finite (so can a finite overflow, which the walk below then
        # clears). Checking tensor by tensor cost two small ops and a sync each, every step.
        totals = []
        if params:
            grad_norm = get_total_norm([p.grad for p in params])
            totals.append(grad_norm)
            if hasattr(pl_module, "step_gradient_norm"):  # clipping, next, scales by it
                pl_module.step_gradient_norm = (params, grad_norm)
        if losses:
            totals.append(get_total_norm(list(losses.values())))
        if not totals or bool(torch.isfinite(torch.stack([t.to(totals[0].device)
                                                          for t in totals])).all()):
            return
        bad = _first_non_finite(losses, pl_module)
        if bad is None:
            return
        if self.last_good is not None:
            trainer.save_checkpoint(self.last_good, weights_only=False)
        raise NonFiniteError(bad[0], bad[1], step, self.last_good)

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self._remove_hook()

    def on_exception(self, trainer: L.Trainer, pl_module: Any, exception: BaseException) -> None:
        self._remove_hook()


def _times_nan(module: torch.nn.Module, inputs: Any, output: Tensor) -> Tensor:
    return output * math.nan
