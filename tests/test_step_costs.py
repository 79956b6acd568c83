"""What recrl adds to each optimiser step, kept cheap without changing what it records
(bench/training.py measures the cost; docs/benchmarks.md).

- ``PolicyModule.should_log``: ``self.log`` runs only on the steps the loggers write (every
  ``trainer.log_every_n_steps``), and metrics.csv holds the same rows and values as when every
  step logs; the loss terms still reach the NaN guard every step.
- ``NonFiniteGuard``: one finiteness check of a total per step (one host sync), and the same
  error naming the same loss term or gradient as a check of every tensor.
- ``StepProgressBar``: redrawn at most every ``min_interval`` seconds, and at the last step.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from lightning_modules import DQNModule, PPOModule
from lightning_modules.policy import PolicyModule
from lightning_modules.reinforce import ReinforceModule
from recrl.run_control import NonFiniteError, NonFiniteGuard
from tests.conftest import small_module

LOG_EVERY = 5
MAX_STEPS = 12  # logging steps 5 and 10 (global_step 4 and 9), and two steps past the last

#: Small, fast settings of each algorithm (updates start with the first rollout).
ALGOS = {
    "dqn": (DQNModule, dict(num_envs=4, frames_per_batch=32, updates_per_batch=2, batch_size=16,
                            learning_starts=0, n_steps=2, click_loss_weight=1.0)),
    "ppo": (PPOModule, dict(num_envs=4, frames_per_batch=32, ppo_epochs=2, minibatch_size=16)),
    "reinforce": (ReinforceModule, dict(num_envs=4, frames_per_batch=32)),
}


class RecordSteps(L.Callback):
    """Before the guard consumes them: which loss terms each step recorded."""

    def __init__(self) -> None:
        self.losses: list[set[str]] = []

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.losses.append(set(pl_module.step_losses))


def train_logged(algo: str, log_dir: Path) -> tuple[list[dict[str, str]], Counter, RecordSteps]:
    """A short seeded fit with a CSV logger; its metrics.csv rows, the training steps
    (``global_step``) on which ``self.log`` was called, and the loss terms each step recorded."""
    module_class, kwargs = ALGOS[algo]
    L.seed_everything(0, verbose=False)
    module = small_module(module_class, **kwargs)
    logged_at: Counter = Counter()
    log = module.log

    def counting_log(*args: Any, **kwargs: Any) -> None:
        logged_at[module.trainer.global_step] += 1
        log(*args, **kwargs)

    module.log = counting_log
    record = RecordSteps()
    trainer = L.Trainer(max_steps=MAX_STEPS, log_every_n_steps=LOG_EVERY, accelerator="cpu",
                        logger=CSVLogger(log_dir, name="", version=""),
                        callbacks=[record, NonFiniteGuard(None)], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    trainer.fit(module)
    with open(log_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return rows, logged_at, record


def without_timing(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows less the collection speed, which is wall time and differs from run to run."""
    return [{k: v for k, v in row.items() if k != "train/frames_per_s"} for row in rows]


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_self_log_runs_on_logging_steps_only_and_the_csv_is_unchanged(
    algo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, logged_at, record = train_logged(algo, tmp_path / "gated")
    # self.log on 1 step in LOG_EVERY: global_step 4 and 9 are steps 5 and 10.
    assert sorted(logged_at) == [LOG_EVERY - 1, 2 * LOG_EVERY - 1]
    # The guard still saw every step's loss terms.
    assert len(record.losses) == MAX_STEPS and all("train/loss" in s for s in record.losses)
    train_rows = [row for row in rows if row["train/loss"]]
    assert [row["step"] for row in train_rows] == [str(LOG_EVERY - 1), str(2 * LOG_EVERY - 1)]

    # The same run logging on every step, as before the gate: the same file, row for row.
    monkeypatch.setattr(PolicyModule, "should_log", property(lambda self: True))
    every_rows, every_logged_at, _ = train_logged(algo, tmp_path / "every")
    assert sorted(every_logged_at) == list(range(MAX_STEPS))
    assert list(rows[0]) == list(every_rows[0])
    assert without_timing(rows) == without_timing(every_rows)


def test_should_log_follows_lightnings_rule_and_is_false_without_a_trainer() -> None:
    module = small_module(ReinforceModule, num_envs=4, frames_per_batch=32)
    assert module.should_log is False  # no trainer: nothing would be logged

    seen: list[tuple[int, bool]] = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append((trainer.global_step, pl_module.should_log))

    trainer = L.Trainer(max_steps=7, log_every_n_steps=3, accelerator="cpu", logger=False,
                        callbacks=[Probe()], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module)
    assert seen == [(step, (step + 1) % 3 == 0) for step in range(7)]


# -- the non-finite guard -----------------------------------------------------------------------
class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(3, 4)
        self.second = nn.Linear(4, 2)


def guard_check(module: nn.Module, losses: dict[str, torch.Tensor] | None = None,
                last_good: Path | None = None) -> None:
    """``NonFiniteGuard.on_before_optimizer_step`` on ``module``'s current gradients, before the
    step of an optimiser of all its parameters."""
    module.step_losses = dict(losses or {})
    trainer = SimpleNamespace(global_step=6, save_checkpoint=lambda *a, **k: None)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    NonFiniteGuard(last_good).on_before_optimizer_step(trainer, module, optimizer)


def with_grads(module: nn.Module, value: float = 0.5) -> nn.Module:
    for param in module.parameters():
        param.grad = torch.full_like(param, value)
    return module


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_guard_names_the_first_gradient_that_is_not_finite(bad: float) -> None:
    module = with_grads(TwoLayers())
    module.second.weight.grad[1, 2] = bad
    module.second.bias.grad[0] = math.inf  # later in order: not the one named
    with pytest.raises(NonFiniteError) as err:
        guard_check(module, {"train/loss": torch.tensor(0.3)})
    expected = "nan" if math.isnan(bad) else "inf"
    assert str(err.value) == f"the gradient of second.weight is {expected} at optimiser step 7"
    assert err.value.what == "the gradient of second.weight" and err.value.step == 7


def test_the_guard_names_a_loss_term_before_any_gradient() -> None:
    module = with_grads(TwoLayers())
    module.first.weight.grad[0, 0] = math.nan
    with pytest.raises(NonFiniteError, match=r"^train/td_loss is inf at optimiser step 7$"):
        guard_check(module, {"train/loss": torch.tensor(1.0), "train/td_loss": torch.tensor(math.inf),
                             "train/click_loss": torch.tensor(math.nan)})
    assert module.step_losses == {}  # consumed, as every step


def test_the_guard_lets_finite_values_pass_even_when_their_total_overflows() -> None:
    module = with_grads(TwoLayers(), value=1e30)  # squares overflow float32: the total is inf
    guard_check(module, {"train/loss": torch.tensor(3e38)})


def test_the_guard_syncs_with_the_host_once_per_finite_step(monkeypatch: pytest.MonkeyPatch) -> None:
    module = with_grads(TwoLayers())
    calls = []
    to_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda self: calls.append(1) or to_bool(self))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: pytest.fail("item() in the guard"))
    guard_check(module, {"train/loss": torch.tensor(0.2), "train/td_loss": torch.tensor(0.1)})
    assert len(calls) == 1


# -- the progress bar -----------------------------------------------------------------------------
@pytest.mark.parametrize(("min_interval", "drawn"), [(0.0, list(range(1, 8))), (3600.0, [1, 7])])
def test_the_step_bar_redraws_at_most_every_min_interval_and_at_the_last_step(
    min_interval: float, drawn: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning.pytorch.callbacks.progress.tqdm_progress as tqdm_progress

    from recrl.callbacks import StepProgressBar

    seen: list[int] = []
    update_n = tqdm_progress._update_n
    monkeypatch.setattr(tqdm_progress, "_update_n",
                        lambda bar, value: seen.append(value) or update_n(bar, value))
    module = small_module(ReinforceModule, num_envs=4, frames_per_batch=32)
    trainer = L.Trainer(max_steps=7, accelerator="cpu", logger=False,
                        callbacks=[StepProgressBar(min_interval=min_interval)],
                        enable_checkpointing=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    trainer.fit(module)
    assert seen == drawn  # the bar's count: optimiser steps, the last one always shown


# -- batches the rollout stream made on the module's device ---------------------------------------
def test_a_batch_already_on_the_device_is_not_rebuilt(monkeypatch: pytest.MonkeyPatch) -> None:
    from tensordict import TensorDict

    moved: list[Any] = []
    monkeypatch.setattr(L.LightningModule, "transfer_batch_to_device",
                        lambda self, batch, device, idx: moved.append(batch) or batch)
    module = small_module(ReinforceModule, num_envs=4, frames_per_batch=32)
    cpu = torch.device("cpu")
    # No device of its own (as a minibatch indexed out of a rollout), every leaf on the CPU.
    batch = TensorDict({"a": torch.zeros(4), ("next", "b"): torch.ones(4, 2)}, batch_size=[4])
    assert batch.device is None
    assert module.transfer_batch_to_device(batch, cpu, 0) is batch
    assert module.transfer_batch_to_device(batch.to(cpu), cpu, 0) is not None and not moved
    # A leaf elsewhere: Lightning's transfer moves it.
    batch[("next", "c")] = torch.zeros(4, device="meta")
    module.transfer_batch_to_device(batch, cpu, 0)
    assert moved == [batch]


# -- clipping by the guard's total ------------------------------------------------------------------
def test_clipping_by_the_guards_norm_equals_clip_grad_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    def module_with_grads() -> PolicyModule:
        module = small_module(ReinforceModule, num_envs=4, frames_per_batch=32, max_grad_norm=0.5)
        torch.manual_seed(1)
        for param in module.parameters():
            param.grad = torch.randn_like(param)
        return module

    logged: dict[str, torch.Tensor] = {}
    monkeypatch.setattr(PolicyModule, "should_log", property(lambda self: True))
    guarded, reference = module_with_grads(), module_with_grads()
    guarded.log = lambda name, value, **kwargs: logged.setdefault(name, value)
    reference.log = lambda *args, **kwargs: None
    guard_check(guarded, {"train/loss": torch.tensor(0.3)})
    assert guarded.step_gradient_norm is not None
    monkeypatch.setattr(torch.nn.utils.clip_grad, "_get_total_norm",
                        lambda *a, **k: pytest.fail("summed the gradients again"))
    guarded.configure_gradient_clipping(None)
    monkeypatch.undo()
    assert guarded.step_gradient_norm is None  # used once
    expected = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    assert torch.equal(logged["train/grad_norm"], expected)
    for (name, a), (_, b) in zip(guarded.named_parameters(), reference.named_parameters()):
        assert torch.equal(a.grad, b.grad), name


def test_a_module_that_may_change_gradients_after_the_guard_clips_by_its_own_sum() -> None:
    class Rescaling(ReinforceModule):
        def on_before_optimizer_step(self, optimizer: Any) -> None:
            for param in self.parameters():
                param.grad.mul_(100.0)

    module = small_module(Rescaling, num_envs=4, frames_per_batch=32, max_grad_norm=1.0)
    for param in module.parameters():
        param.grad = torch.ones_like(param)
    guard_check(module)
    module.on_before_optimizer_step(None)
    module.configure_gradient_clipping(None)
    total = torch.nn.utils.get_total_norm([p.grad for p in module.parameters()])
    assert total.item() == pytest.approx(1.0, rel=1e-4)  # not 100x too large
