"""Exact resume, atomic checkpoints, signals and the non-finite guard (docs/resuming.md).

What a recrl checkpoint holds beyond Lightning's own (model with the DQN target network and the
exploration schedule, optimiser, LR scheduler, loop counters, callback states): under
``RESUME_KEY``, the training stream's position (the simulator's full state and random generator,
the collector's next observation, the batches Lightning had already fetched but not trained on,
the global RNG states (torch, numpy, Python), where the algorithm stood inside the current
rollout) and the
algorithm's own state (DQN: the replay buffer and the target-update counter). Everything is plain
tensors, numbers, strings, lists and dicts, so every checkpoint loads with
``torch.load(weights_only=True)``.

Pieces:

- `RunControl`: on SIGTERM / SIGINT, training stops at the end of the current optimiser step,
  saves ``checkpoints/last.ckpt`` and raises `RunInterrupted` (the run folder is marked FAILED
  with the command that resumes it).
- `NonFiniteGuard`: a NaN or inf in a loss term or a gradient stops the run before the optimiser
  applies it, after saving the last good state to ``checkpoints/last_good.ckpt``
  (`NonFiniteError` names the quantity and the step).

Checkpoint files (atomic writes, ``ckpt_path=``) are `recrl.checkpoint_io`'s.
"""

from __future__ import annotations

import math
import random
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from tensordict import TensorDict, TensorDictBase
from torch import Tensor

#: Test-only marker a run paused by ``testing.pause_at_step`` writes into its run folder.
PAUSED_FILE = "PAUSED"


# -- plain-data snapshots of TorchRL / torch objects -----------------------------------------
def td_to_state(td: TensorDictBase) -> dict[str, Any]:
    """A TensorDict as nested dicts of tensors (loadable with ``weights_only=True``)."""
    return {
        "batch_size": list(td.batch_size),
        "device": None if td.device is None else str(td.device),
        "data": td.to_dict(),
    }


def td_from_state(state: Mapping[str, Any], device: torch.device | str | None = None, *,
                  keep_saved_device: bool = True) -> TensorDict:
    """The inverse of `td_to_state`, with the tensors on ``device`` when one is given: a
    checkpoint loads onto the CPU, and a TensorDict saved without a device (a collector's
    carrier, its rollouts) does not say where its tensors were. It stays without one.
    ``keep_saved_device=False`` forgets the saved device as well: the tensors stay where they
    were loaded, for a caller that puts each one where it belongs itself."""
    saved_device = state["device"] if keep_saved_device else None
    td = TensorDict(state["data"], batch_size=state["batch_size"], device=saved_device)
    if device is None:
        return td
    return td.to(device) if td.device is not None else td.apply(lambda t: t.to(device))


def rng_state() -> dict[str, Any]:
    """The global random generators: torch (exploration, uniform replay sampling, PPO's
    shuffles and actions, dropout), numpy (TorchRL's prioritised replay samples with
    ``np.random``), Python's and, when in use, CUDA's. Plain tensors and numbers."""
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": {"version": version, "state": torch.tensor(python_state, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(cached_gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def replay_buffer_state(buffer: Any) -> dict[str, Any]:
    """``buffer.state_dict()`` reduced to plain data and to the filled part of its storage.

    A LazyTensorStorage allocates its full capacity at the first write: only the first
    ``len(storage)`` rows hold data. A prioritised sampler's segment trees (C++ objects) become
    tensors of their leaves.
    """
    state = buffer.state_dict()
    storage = buffer._storage
    filled = len(storage)
    inner = getattr(storage, "_storage", None)
    if isinstance(inner, TensorDictBase) and filled < storage.max_size:
        state["_storage"]["_storage"] = inner[:filled].clone().state_dict()
        state["_storage"]["recrl_capacity"] = storage.max_size
    sampler = buffer._sampler
    for key in ("_sum_tree", "_min_tree"):
        if key in state.get("_sampler", {}):
            tree = getattr(sampler, key)
            state["_sampler"][key] = torch.as_tensor(tree[torch.arange(sampler._max_capacity)])
    return state


def load_replay_buffer_state(buffer: Any, state: Mapping[str, Any]) -> None:
    """The inverse of `replay_buffer_state` (the buffer is built with the same settings)."""
    state = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in state.items()}
    storage_state = state["_storage"]
    capacity = storage_state.pop("recrl_capacity", None)
    trees = {}
    sampler = buffer._sampler
    for key in ("_sum_tree", "_min_tree"):
        if key in state.get("_sampler", {}):
            trees[key] = state["_sampler"][key]
            state["_sampler"][key] = getattr(sampler, key)  # replaced by its saved leaves below
    buffer.load_state_dict(state)
    storage = buffer._storage
    if capacity is not None:
        part = storage._storage
        full = part[:1].expand(capacity).clone().zero_()
        full[: part.shape[0]] = part
        storage._storage = full
    # A state dict loads as a TensorDict without a device, and a device-less storage refuses
    # transitions from another device (a GPU simulator's) instead of copying them in as a
    # fresh storage does: give it back the storage's own device.
    device = getattr(storage, "device", None)
    inner = getattr(storage, "_storage", None)
    if isinstance(inner, TensorDictBase) and device is not None and inner.device != device:
        storage._storage = inner.to(device)
    for key, leaves in trees.items():
        tree = getattr(sampler, key)
        dtype = torch.float32 if "Fp32" in type(tree).__name__ else torch.float64
        tree[torch.arange(leaves.numel())] = leaves.to(dtype)


def collector_state(collector: Any) -> dict[str, Any]:
    """A TorchRL ``Collector`` between two rollouts: its environment's whole simulation state,
    the observation it acts on next (the carrier), and its counters.

    Reads ``Collector`` internals (``_carrier``, ``_frames``, ``_iter``, ``_traj_pool``) of
    torchrl 0.14: its own ``state_dict`` holds neither the carrier nor the simulator's state.
    """
    env = collector.env
    if not hasattr(env, "simulation_state"):
        raise TypeError(f"{type(env).__name__} cannot save its state (no simulation_state())")
    state = {
        # The kind of device it simulated on: a generator's state means nothing on another kind.
        "device": str(env.device),
        "env": env.simulation_state(),
        "carrier": td_to_state(collector._carrier),
        "frames": int(collector._frames),
        "iter": int(collector._iter),
    }
    if getattr(collector, "track_traj_ids", False):
        state["traj_pool"] = collector._traj_pool.state_dict()
    return state


def restore_collector(collector: Any, state: Mapping[str, Any]) -> None:
    """Puts a freshly built collector (same env settings) where `collector_state` left one.

    The saved carrier is copied into the fresh collector's own carrier rather than replacing
    it: a checkpoint loads onto the CPU and does not say where each tensor lived, and not all
    live on the simulator's device (TorchRL keeps ``("collector", "traj_ids")`` on the storing
    device, the CPU, beside a GPU simulator's observations). Copying in place keeps every
    tensor where the collector expects it; the policy's last output, which a fresh carrier
    does not hold yet, goes to the simulator's device, where the policy made it.
    """
    saved = td_from_state(state["carrier"], keep_saved_device=False)  # CPU tensors, as loaded
    fresh = collector._carrier
    if saved.batch_size != fresh.batch_size:
        raise ValueError(
            f"the checkpoint's collector simulated {list(saved.batch_size)} users at once, this "
            f"run's {list(fresh.batch_size)}: resume with the algo.num_envs the checkpoint was "
            "saved with"
        )
    saved_keys = set(saved.keys(include_nested=True, leaves_only=True))
    fresh_keys = set(fresh.keys(include_nested=True, leaves_only=True))
    if fresh_keys - saved_keys:
        raise ValueError(
            "the checkpoint's observations lack "
            f"{sorted(map(str, fresh_keys - saved_keys))}, which this run's simulator "
            "returns: resume with the env.* settings the checkpoint was saved with"
        )
    collector.env.load_simulation_state(state["env"])
    fresh.update_(saved.select(*fresh_keys))
    # The rest is the policy's last output (action, Q-values), made on the simulator's device.
    policy_output = saved.exclude(*fresh_keys)
    fresh.update(policy_output.apply(lambda tensor: tensor.to(collector.env.device)))
    collector._frames = state["frames"]
    collector._iter = state["iter"]
    if "traj_pool" in state and getattr(collector, "track_traj_ids", False):
        collector._traj_pool.load_state_dict(state["traj_pool"])


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

    ``pause_at_step`` is test-only (``testing.pause_at_step``): after that step's callbacks, write
    ``<run folder>/PAUSED`` and wait for a signal, so that a test can kill the run at a known
    point of training.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, last_checkpoint: Path, pause_at_step: int | None = None,
                 run_dir: Path | None = None) -> None:
        super().__init__()
        self.last_checkpoint = Path(last_checkpoint)
        self.pause_at_step = pause_at_step
        self.run_dir = run_dir
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


class NonFiniteGuard(L.Callback):
    """Checks the step's loss terms and every gradient before the optimiser applies them.

    The loss terms are the ones the module recorded in ``step_losses`` (``RecommenderModule``
    records ``train/td_loss``, ``train/loss``, ...). On a NaN or inf: save ``last_good`` (the
    weights, optimiser and counters are still those of the previous step) and raise
    `NonFiniteError`. Steps count from 1: the error at step k leaves the state after k - 1 steps.

    ``inject_nan_at_step`` is test-only (``testing.inject_nan_at_step``): that step's encoder output
    is multiplied by NaN, so the NaN travels the real path (loss, then gradients).
    """

    def __init__(self, last_good: Path | None, inject_nan_at_step: int | None = None) -> None:
        super().__init__()
        self.last_good = None if last_good is None else Path(last_good)
        self.inject_nan_at_step = inject_nan_at_step
        self._hook = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if self.inject_nan_at_step is not None and trainer.global_step + 1 == self.inject_nan_at_step:
            self._hook = pl_module.encoder.register_forward_hook(_times_nan)

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        self._remove_hook()
        step = trainer.global_step + 1
        losses = getattr(pl_module, "step_losses", {}) or {}
        bad: tuple[str, str] | None = None
        for name, value in losses.items():
            if not bool(torch.isfinite(value).all()):
                bad = (name, _describe(value))
                break
        if hasattr(pl_module, "step_losses"):
            pl_module.step_losses = {}
        if bad is None:
            grads = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
            if grads and not bool(torch.stack([g.isfinite().all() for _, g in grads]).all()):
                name, grad = next((n, g) for n, g in grads if not bool(g.isfinite().all()))
                bad = (f"the gradient of {name}", _describe(grad))
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
