"""Plain-data snapshots of TorchRL and torch objects for exact resume (docs/resuming.md).

A checkpoint must load with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists
and dicts only. This module turns what a resumed run needs into that form and back:
TensorDicts (`td_to_state`, `td_from_state`), the global random generators (`rng_state`,
`restore_rng`), a replay buffer (`replay_buffer_state`, `load_replay_buffer_state`) and a
collector between two rollouts (`collector_state`, `restore_collector`).

It is the only module of recrl that reads or writes TorchRL's private attributes (those of
torchrl 0.14.1, the version pyproject.toml pins). `check_torchrl_internals` checks that the
installed TorchRL still has every one of them; the four functions that use them run it before
their first use (once per process), so that another TorchRL version fails with one line that
says what to do instead of saving or restoring a wrong state.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torchrl
from tensordict import TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import PrioritizedSampler

#: The TorchRL release whose private attributes this module reads and writes.
TORCHRL_VERSION = "0.14.1"


# -- start-up check ---------------------------------------------------------------------------
class TorchRLInternalsError(RuntimeError):
    """The installed TorchRL lacks a private attribute that resuming reads or writes."""


def check_torchrl_internals() -> None:
    """Raises `TorchRLInternalsError` (one line: the attribute, the installed version, the fix)
    unless the installed TorchRL has every private attribute this module relies on.

    A tiny, never written replay buffer (prioritised, so that it has segment trees) shows the
    replay buffer's; a collector needs an environment to build, so its attributes are checked
    on the class: ``_traj_pool`` is a property of it, the others are set by its methods, whose
    code must still name them. A few milliseconds.
    """
    def require(present: bool, what: str) -> None:
        if not present:
            raise TorchRLInternalsError(
                f"the installed TorchRL has no {what}, which resuming reads and writes: recrl "
                f"needs torchrl=={TORCHRL_VERSION}; this is {torchrl.__version__}: pin it "
                f"(pip install torchrl=={TORCHRL_VERSION}) or update recrl/torchrl_state.py"
            )

    buffer = TensorDictReplayBuffer(storage=LazyTensorStorage(1), batch_size=1,
                                    sampler=PrioritizedSampler(1, alpha=0.6, beta=0.4))
    for name in ("_storage", "_sampler"):
        require(hasattr(buffer, name), f"TensorDictReplayBuffer.{name}")
    require(hasattr(buffer._storage, "_storage"), "LazyTensorStorage._storage")
    sampler = buffer._sampler
    for name in ("_sum_tree", "_min_tree", "_max_capacity"):
        require(hasattr(sampler, name), f"PrioritizedSampler.{name}")
    # load_replay_buffer_state tells the trees' precision by their type's name.
    require(type(sampler._sum_tree).__name__ == "SumSegmentTreeFp32",
            "SumSegmentTreeFp32 as the type of a float32 PrioritizedSampler._sum_tree")
    state = buffer.state_dict()
    require("_storage" in state.get("_storage", {}),
            'TensorDictReplayBuffer.state_dict()["_storage"]["_storage"]')
    for name in ("_sum_tree", "_min_tree"):
        require(name in state.get("_sampler", {}),
                f'TensorDictReplayBuffer.state_dict()["_sampler"]["{name}"]')
    require(hasattr(Collector, "_traj_pool"), "Collector._traj_pool")
    named = _names_in_methods(Collector)
    for name in ("_carrier", "_frames", "_iter", "track_traj_ids"):
        require(name in named, f"Collector.{name}")


def _names_in_methods(cls: type) -> set[str]:
    """The attribute (and global) names that the code of the methods and properties of ``cls``
    and of its TorchRL bases uses: an instance attribute they no longer set or read is missing.
    (``co_names`` of each function: reading them is ~100x faster than disassembling.)"""
    names: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("torchrl."):
            continue
        for member in vars(klass).values():
            function = member.fget if isinstance(member, property) else member
            code = getattr(getattr(function, "__func__", function), "__code__", None)
            if code is not None:
                names.update(code.co_names)
    return names


@functools.cache
def _require_torchrl_internals() -> None:
    """`check_torchrl_internals`, once per process (a failed check is not remembered)."""
    check_torchrl_internals()


# -- snapshots --------------------------------------------------------------------------------
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
    _require_torchrl_internals()
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


def load_replay_buffer_state(buffer: Any, state: Mapping[str, Any],
                             device: torch.device | str | None = None) -> None:
    """The inverse of `replay_buffer_state` (the buffer is built with the same settings).

    ``device``: where a storage built with ``device="auto"`` (it follows the first data it
    is given) keeps the loaded transitions: the device the run trains on.
    """
    _require_torchrl_internals()
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
    if getattr(storage, "device", None) == "auto":
        storage.device = torch.device(device if device is not None else "cpu")
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
    _require_torchrl_internals()
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
    _require_torchrl_internals()
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
