"""Exact resume, atomic checkpoints, signals and the NaN guard (recrl/checkpoint_io.py,
recrl/torchrl_state.py, recrl/run_control.py).

The end-to-end tests run the real entry point in subprocesses, all of them started by one
module-scoped fixture (``runs``) in two waves of parallel processes, each limited to one thread
(the machine has 2 cores): wave 1 runs the uninterrupted DQN and PPO runs, their twins that pause
mid-training (test-only ``callbacks.run_control.pause_at_step``) and are then killed from here (DQN: SIGKILL,
PPO: SIGTERM), and the NaN-injection run; wave 2 resumes both killed runs with ``ckpt_path=last``
and tries to resume from a truncated checkpoint.

Reproducibility of a whole run (same seed, same machine, CPU -> identical results.json) is
tested for both algorithms in tests/test_run.py (``test_same_seed_same_metrics``); here the
uninterrupted runs are the reference of the resumed ones.
"""

from __future__ import annotations

import csv
import io
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torchrl
from tensordict import TensorDict
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.replay_buffers import PrioritizedSampler, RandomSampler

import recrl.checkpoint_io as checkpoint_io
import recrl.torchrl_state as torchrl_state
from recrl.checkpoint_io import RESUME_KEY, AtomicCheckpointIO
from recrl.envs import InterestEvolutionEnv, uniform_valid_action
from recrl.run_control import PAUSED_FILE
from recrl.torchrl_state import (
    TorchRLInternalsError, check_torchrl_internals, collector_state, load_replay_buffer_state,
    replay_buffer_state, restore_collector, restore_rng, rng_state, td_from_state, td_to_state,
)
from tests.conftest import REPO_ROOT, read_results, recrl_command, subprocess_env

#: Small runs with short sessions (time_budget 20) so that evaluations are quick.
COMMON = ["debug=smoke", "env.time_budget=20", "evaluation.every_n_steps=10"]
#: DQN (16-frame rollouts, 2 updates each): checkpoints at 8, 16, 24, 32; killed at step 27, so
#: the resume starts at 24, in the middle of a rollout's updates (Lightning has already fetched
#: the first update of the next rollout, which the checkpoint keeps).
DQN_STEPS = 32
DQN = ["algo=dqn", f"trainer.max_steps={DQN_STEPS}", "checkpoint.every_n_steps=8"]
DQN_PAUSE = 27
#: PPO (32-frame rollouts, 2 epochs x 2 minibatches): checkpoints at 7, 14, 21, 28; stopped by
#: SIGTERM at step 23, which saves its own checkpoint there, between the epochs of a rollout.
#: (Both lengths are multiples of the checkpoint period: the final checkpoints are comparable.)
PPO_STEPS = 28
PPO = ["algo=ppo", f"trainer.max_steps={PPO_STEPS}", "checkpoint.every_n_steps=7"]
PPO_PAUSE = 23
#: The NaN run: step 3 is the third DQN update (updates start with the second rollout).
NAN_STEP = 3
TIMEOUT = 600


@dataclass
class Run:
    run_dir: Path
    proc: subprocess.Popen
    stdout: Path
    stderr: Path
    #: What the folder held when this process ended (before a resumed run reused it).
    left: dict | None = None

    def wait(self, timeout: float = TIMEOUT) -> int:
        return self.proc.wait(timeout=timeout)

    @property
    def err(self) -> str:
        return self.stderr.read_text()

    def results(self) -> dict:
        return read_results(self.run_dir)


def start(run_dir: Path, *overrides: str, log_name: str | None = None) -> Run:
    """``python -m recrl.run`` in the background, one thread (runs share 2 cores here)."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    stdout = run_dir.parent / f"{log_name or run_dir.name}.out"
    stderr = run_dir.parent / f"{log_name or run_dir.name}.err"
    with open(stdout, "w") as out, open(stderr, "w") as err:
        proc = subprocess.Popen(recrl_command(f"hydra.run.dir={run_dir}", *overrides),
                                cwd=REPO_ROOT, env=subprocess_env(threads=1), stdout=out,
                                stderr=err)
    return Run(run_dir, proc, stdout, stderr)


def wait_for_pause(run: Run, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not (run.run_dir / PAUSED_FILE).is_file():
        if run.proc.poll() is not None:
            raise AssertionError(f"run ended before pausing:\n{run.err[-3000:]}")
        if time.monotonic() > deadline:
            run.proc.kill()
            raise AssertionError("run did not reach its pause step in time")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    root = tmp_path_factory.mktemp("resume")
    runs: dict[str, Run] = {}
    try:
        # Wave 1.
        runs["dqn"] = start(root / "dqn", *COMMON, *DQN)
        runs["dqn_killed"] = start(root / "dqn_killed", *COMMON, *DQN,
                                   f"callbacks.run_control.pause_at_step={DQN_PAUSE}")
        runs["ppo"] = start(root / "ppo", *COMMON, *PPO)
        runs["ppo_stopped"] = start(root / "ppo_stopped", *COMMON, *PPO,
                                    f"callbacks.run_control.pause_at_step={PPO_PAUSE}")
        runs["nan"] = start(root / "nan", *COMMON, "algo=dqn", f"callbacks.non_finite_guard.inject_nan_at_step={NAN_STEP}")
        wait_for_pause(runs["dqn_killed"])
        runs["dqn_killed"].proc.send_signal(signal.SIGKILL)  # no chance to save anything
        runs["dqn_killed"].wait()
        wait_for_pause(runs["ppo_stopped"])
        runs["ppo_stopped"].proc.send_signal(signal.SIGTERM)
        runs["ppo_stopped"].wait()
        stopped = runs["ppo_stopped"].run_dir
        runs["ppo_stopped"].left = {
            "FAILED": (stopped / "FAILED").read_text() if (stopped / "FAILED").exists() else None,
            "results.json": (stopped / "results.json").exists(),
            "checkpoint_step": torch.load(stopped / "checkpoints" / "last.ckpt",
                                          weights_only=True)["global_step"],
        }
        # Wave 2: the same commands again in the same folders, with ckpt_path=last.
        killed = runs["dqn_killed"].run_dir
        runs["dqn_resumed"] = start(killed, *COMMON, *DQN, "ckpt_path=last", log_name="dqn_resumed")
        runs["ppo_resumed"] = start(runs["ppo_stopped"].run_dir, *COMMON, *PPO, "ckpt_path=last",
                                    log_name="ppo_resumed")
        # The killed run's checkpoint, marked as if its simulation had run on a GPU.
        other_device = root / "other_device.ckpt"
        ckpt = torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)
        ckpt["recrl_resume"]["stream"]["collector"]["device"] = "cuda:0"
        torch.save(ckpt, other_device)
        runs["other_device"] = start(root / "other_device", *COMMON, *DQN,
                                     f"ckpt_path={other_device}")
        truncated = root / "truncated.ckpt"
        data = (killed / "checkpoints" / "last.ckpt").read_bytes()
        truncated.write_bytes(data[: len(data) // 2])
        runs["truncated"] = start(root / "truncated", *COMMON, "algo=dqn", f"ckpt_path={truncated}")
        for run in runs.values():
            run.wait()
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.kill()
    return runs


def final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def assert_same_run(reference: Run, resumed: Run, steps: int) -> None:
    assert resumed.proc.returncode == 0, resumed.err[-3000:]
    assert reference.proc.returncode == 0, reference.err[-3000:]
    first, second = reference.results(), resumed.results()
    assert second["optimizer_steps"] == first["optimizer_steps"] == steps
    assert second["frames"] == first["frames"]
    assert second["agent"] == first["agent"]
    assert second["baselines"] == first["baselines"]
    # Stronger than the metrics: every weight, target-network weight and counter is equal.
    a, b = final_state(reference.run_dir), final_state(resumed.run_dir)
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert not (resumed.run_dir / "FAILED").exists()  # the resumed run completed the folder
    # metrics.csv holds the interrupted run's rows up to the checkpoint, then the resumed run's.
    for column in ("val/return", "train/loss"):
        assert logged(resumed.run_dir, column) == logged(reference.run_dir, column)


def logged(run_dir: Path, column: str) -> list[tuple[int, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [(int(row["step"]), row[column]) for row in csv.DictReader(f) if row.get(column)]


# -- a checkpoint whose simulation ran on another kind of device ----------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_resuming_on_another_kind_of_device_goes_on_with_fresh_users_and_says_so(runs) -> None:
    run = runs["other_device"]
    assert run.proc.returncode == 0, run.err[-3000:]
    results = run.results()
    assert results["optimizer_steps"] == DQN_STEPS  # went on from the checkpoint's step to the end
    note = results["resumed_with_fresh_users"]
    assert "ran on cuda, this run simulates on cpu" in note
    assert "resumed with fresh users" in run.err  # and the run said so when it happened
    # An exact resume records nothing of the kind.
    assert "resumed_with_fresh_users" not in runs["dqn_resumed"].results()


def test_fresh_users_after_a_resume_are_new_users_not_the_runs_first_ones() -> None:
    from tests.test_dqn import make_module

    module = make_module(seed=3)
    assert module.collection_seed() == 3  # no trainer yet: the run's seed
    module._trainer = SimpleNamespace(world_size=1, global_rank=0, global_step=40)
    assert module.collection_seed() == 3  # an exact resume goes on with the saved stream
    module.resumed_with_fresh_users = "the checkpoint's simulation ran on cuda"
    assert module.collection_seed() == 3 + 40  # another device kind: users from a new seed
    module._trainer = SimpleNamespace(world_size=4, global_rank=2, global_step=40)
    module.resumed_with_fresh_users = None
    assert module.collection_seed() == 3 + 2 + 4 * 40  # DDP: distinct per rank and step


# -- DQN: SIGKILL mid-training, resume, same results -----------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_dqn_killed_with_sigkill_and_resumed_ends_exactly_like_an_uninterrupted_run(runs) -> None:
    killed = runs["dqn_killed"]
    assert killed.proc.returncode == -signal.SIGKILL
    assert_same_run(runs["dqn"], runs["dqn_resumed"], DQN_STEPS)
    assert runs["dqn_resumed"].results()["resumed_from"].endswith("last.ckpt")


@pytest.mark.slow
@pytest.mark.e2e
def test_dqn_checkpoint_holds_the_whole_training_state_as_plain_data(runs) -> None:
    ckpt = torch.load(runs["dqn"].run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    state = ckpt[RESUME_KEY]
    assert {"replay_buffer", "target_updater", "stream"} <= state.keys()
    stream = state["stream"]
    assert len(stream["pending"]) == 1  # Lightning had fetched one batch ahead
    assert {"env", "carrier", "frames", "iter"} <= stream["collector"].keys()
    assert {"rng", "users"} <= stream["collector"]["env"].keys()
    assert any(k.startswith("loss_module.target_value_network_params") for k in ckpt["state_dict"])
    assert "exploration.eps" in ckpt["state_dict"]


# -- PPO: SIGTERM saves a checkpoint, resume, same results ------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_sigterm_saves_a_checkpoint_marks_the_folder_and_says_how_to_resume(runs) -> None:
    stopped = runs["ppo_stopped"]
    assert stopped.proc.returncode == 128 + signal.SIGTERM
    lines = [line for line in stopped.err.splitlines() if line.startswith("recrl:")]
    assert len(lines) == 1 and "SIGTERM" in lines[0] and f"step {PPO_PAUSE}" in lines[0]
    assert "ckpt_path=last" in lines[0] and f"hydra.run.dir={stopped.run_dir}" in lines[0]
    assert "Traceback" not in stopped.err
    left = stopped.left
    assert left["checkpoint_step"] == PPO_PAUSE  # saved at the end of the step it was in
    assert left["FAILED"].startswith("interrupted") and "ckpt_path=last" in left["FAILED"]
    assert not left["results.json"]


@pytest.mark.slow
@pytest.mark.e2e
def test_ppo_stopped_and_resumed_ends_exactly_like_an_uninterrupted_run(runs) -> None:
    # PPO resumes exactly too: the checkpoint keeps the rollout's frames, the epoch, the
    # shuffled order and the position in it.
    assert_same_run(runs["ppo"], runs["ppo_resumed"], PPO_STEPS)


# -- guarded failures -------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_nan_stops_the_run_naming_step_and_loss_after_saving_the_last_good_state(runs) -> None:
    run = runs["nan"]
    assert run.proc.returncode != 0
    assert f"train/td_loss is nan at optimiser step {NAN_STEP}" in run.err
    assert "Traceback" not in run.err, run.err[-3000:]
    assert "non-finite" in (run.run_dir / "FAILED").read_text()
    assert not (run.run_dir / "results.json").exists()
    good = torch.load(run.run_dir / "checkpoints" / "last_good.ckpt", map_location="cpu",
                      weights_only=True)
    assert good["global_step"] == NAN_STEP - 1
    floats = [v for v in good["state_dict"].values() if v.is_floating_point()]
    assert floats and all(torch.isfinite(v).all() for v in floats)


@pytest.mark.slow
@pytest.mark.e2e
def test_a_truncated_checkpoint_ends_with_one_line_naming_the_file(runs) -> None:
    run = runs["truncated"]
    assert run.proc.returncode != 0
    assert "Traceback" not in run.err, run.err[-3000:]
    lines = [line for line in run.err.splitlines() if line.startswith("recrl:")]
    assert len(lines) == 1
    assert "truncated.ckpt" in lines[0] and "truncated or not a checkpoint" in lines[0]
    assert not (run.run_dir / "results.json").exists()


# -- in-process units ------------------------------------------------------------------------
def test_atomic_checkpoint_write_never_leaves_a_partial_file(tmp_path: Path, monkeypatch) -> None:
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a zip archive")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_io.torch, "save", crash_mid_write)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    kept = torch.load(path, weights_only=True)
    assert kept["step"] == 1 and torch.equal(kept["w"], torch.ones(3))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary file left


@pytest.mark.parametrize("prioritized", [False, True])
def test_replay_buffer_round_trips_through_a_weights_only_file(tmp_path: Path,
                                                               prioritized: bool) -> None:
    def make() -> TensorDictReplayBuffer:
        sampler = PrioritizedSampler(64, alpha=0.6, beta=0.4) if prioritized else RandomSampler()
        return TensorDictReplayBuffer(storage=LazyTensorStorage(64), sampler=sampler,
                                      batch_size=8, priority_key="td_error")

    def data(start: int, n: int) -> TensorDict:
        x = torch.arange(start, start + n, dtype=torch.float32)
        td = TensorDict({"x": x, ("next", "y"): x[:, None].expand(n, 3).clone()}, batch_size=[n])
        if prioritized:
            td["td_error"] = x / 10
        return td

    saved = make()
    saved.extend(data(0, 20))
    if prioritized:
        sample = saved.sample()
        sample["td_error"] = sample["x"] + 1
        saved.update_tensordict_priority(sample)
    torch.save(replay_buffer_state(saved), tmp_path / "rb.pt")
    loaded = make()
    load_replay_buffer_state(loaded, torch.load(tmp_path / "rb.pt", weights_only=True))
    assert len(loaded) == len(saved) == 20
    assert len(loaded.storage._storage) == 64  # the full capacity again
    # On the storage's device as a fresh one is, so a GPU simulator's transitions copy in.
    assert loaded.storage._storage.device == saved.storage._storage.device == torch.device("cpu")
    for buffer in (saved, loaded):
        buffer.extend(data(100, 50))  # wraps around the ring
    # Prioritised sampling draws from numpy's global generator, uniform from torch's.
    state = rng_state()
    first = saved.sample()
    restore_rng(state)
    second = loaded.sample()
    assert torch.equal(first["x"], second["x"])
    assert torch.equal(first["next", "y"], second["next", "y"])


def test_a_storage_that_follows_its_data_loads_onto_the_training_device(tmp_path: Path) -> None:
    """DQN's storage takes the device of the first rollout (``device="auto"``); a checkpoint
    loaded before any rollout must put the transitions on the device the run trains on."""
    def make() -> TensorDictReplayBuffer:
        return TensorDictReplayBuffer(storage=LazyTensorStorage(16, device="auto"), batch_size=4)

    saved = make()
    saved.extend(TensorDict({"x": torch.arange(6.0)}, batch_size=[6], device="cpu"))
    assert saved.storage.device == torch.device("cpu")  # followed the data
    torch.save(replay_buffer_state(saved), tmp_path / "rb.pt")
    loaded = make()
    load_replay_buffer_state(loaded, torch.load(tmp_path / "rb.pt", weights_only=True),
                             torch.device("cpu"))
    assert loaded.storage.device == torch.device("cpu")  # no longer "auto"
    assert torch.equal(loaded.storage[:6]["x"], torch.arange(6.0))
    loaded.extend(TensorDict({"x": torch.arange(6.0, 9.0)}, batch_size=[3], device="cpu"))
    assert len(loaded) == 9


def test_environment_state_round_trips_and_the_simulation_goes_on_identically() -> None:
    def make(seed: int) -> InterestEvolutionEnv:  # short sessions: users leave and are reset
        return InterestEvolutionEnv(16, seed=seed, num_items=60, history_length=5, time_budget=5.0)

    picks = torch.Generator().manual_seed(0)
    env = make(3)
    td = env.reset()
    for _ in range(7):
        _, td = env.step_and_maybe_reset(td.set("action", uniform_valid_action(td["action_mask"], picks)))
    buffer = io.BytesIO()
    torch.save(env.simulation_state(), buffer)
    buffer.seek(0)
    twin = make(99)  # other users and another generator state, all replaced
    twin.reset()
    twin.load_simulation_state(torch.load(buffer, weights_only=True))
    td_twin = td.clone()
    resets = 0
    for _ in range(30):
        action = uniform_valid_action(td["action_mask"], picks)
        out, td = env.step_and_maybe_reset(td.set("action", action))
        out_twin, td_twin = twin.step_and_maybe_reset(td_twin.set("action", action.clone()))
        assert (out["next"] == out_twin["next"]).all()
        assert (td == td_twin).all()
        resets += int(out["next", "done"].sum())
    assert resets > 0  # the generator's state mattered: reset users were drawn from it


def test_a_saved_tensordict_comes_back_on_its_device_or_on_none_when_asked() -> None:
    """`td_from_state` restores the saved device by default; ``keep_saved_device=False`` (what
    `restore_collector` reads a carrier with) gives a TensorDict without one, same data."""
    state = td_to_state(TensorDict({"a": torch.arange(3), ("b", "c"): torch.ones(3, 2)},
                                   batch_size=[3], device="cpu"))
    assert td_from_state(state).device == torch.device("cpu")
    forgotten = td_from_state(state, keep_saved_device=False)
    assert forgotten.device is None and forgotten.batch_size == torch.Size([3])
    assert forgotten["a"].tolist() == [0, 1, 2] and forgotten["b", "c"].shape == (3, 2)


def test_a_restored_carrier_keeps_each_tensor_where_the_fresh_collector_keeps_it() -> None:
    """On a GPU, TorchRL keeps ``("collector", "traj_ids")`` on the CPU beside the simulator's
    GPU observations; moving the whole restored carrier to the simulator's device broke the
    next rollout (found on an H200). Here a leaf on the meta device stands in for "not where
    the simulator is"."""
    def collector(env: InterestEvolutionEnv, traj_ids: torch.Tensor) -> SimpleNamespace:
        # Without a TensorDict device, as TorchRL keeps a carrier whose tensors live apart.
        carrier = env.reset().clear_device_().set(("collector", "traj_ids"), traj_ids)
        return SimpleNamespace(env=env, _carrier=carrier, _frames=0, _iter=0)

    def make(seed: int, users: int = 4) -> InterestEvolutionEnv:
        return InterestEvolutionEnv(users, seed=seed, num_items=30, history_length=5)

    saved = collector(make(0), torch.arange(4))
    saved._carrier.set("action", torch.tensor([3, 1, 4, 1]))  # the policy's last output
    saved._frames, saved._iter = 24, 3
    buffer = io.BytesIO()
    torch.save(collector_state(saved), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    fresh = collector(make(1), torch.zeros(4, dtype=torch.int64, device="meta"))
    carrier = fresh._carrier
    restore_collector(fresh, state)
    assert fresh._carrier is carrier  # filled in place, not replaced
    assert carrier["collector", "traj_ids"].device.type == "meta"
    assert (carrier.exclude("collector") == saved._carrier.exclude("collector")).all()
    assert carrier["action"].tolist() == [3, 1, 4, 1]
    assert (fresh._frames, fresh._iter) == (24, 3)

    with pytest.raises(ValueError, match=r"\[4\] users at once, this run's \[6\].*algo.num_envs"):
        restore_collector(collector(make(0, users=6), torch.arange(6)), state)


def _without_max_capacity(monkeypatch) -> None:
    init = PrioritizedSampler.__init__

    def init_then_forget(self, *args, **kwargs):
        init(self, *args, **kwargs)
        del self._max_capacity

    monkeypatch.setattr(PrioritizedSampler, "__init__", init_then_forget)


def _collector_without_carrier(monkeypatch) -> None:
    """A Collector class whose methods no longer name ``_carrier`` (nor the other attributes)."""
    bare = type("Collector", (), {"__module__": Collector.__module__,
                                  "_traj_pool": property(lambda self: None)})
    monkeypatch.setattr(torchrl_state, "Collector", bare)


@pytest.mark.parametrize("remove, attribute", [
    (lambda monkeypatch: monkeypatch.delattr(Collector, "_traj_pool"), "Collector._traj_pool"),
    (_collector_without_carrier, "Collector._carrier"),
    (_without_max_capacity, "PrioritizedSampler._max_capacity"),
])
def test_a_torchrl_without_a_private_attribute_resume_relies_on_fails_with_one_line(
    monkeypatch, remove, attribute: str,
) -> None:
    """The start-up check names the missing attribute, the installed torchrl version and the
    fix; the snapshot functions run it before their first use (once per process while it
    passes)."""
    torchrl_state._require_torchrl_internals.cache_clear()
    check_torchrl_internals()  # the installed torchrl has them all
    remove(monkeypatch)
    try:
        with pytest.raises(TorchRLInternalsError) as raised:
            check_torchrl_internals()
        message = str(raised.value)
        assert "\n" not in message
        assert f"no {attribute}," in message
        assert f"recrl needs torchrl==0.14.1; this is {torchrl.__version__}: pin it" in message
        assert "update recrl/torchrl_state.py" in message
        # Before the collector or the buffer is touched at all.
        with pytest.raises(TorchRLInternalsError, match=attribute):
            collector_state(SimpleNamespace())
        with pytest.raises(TorchRLInternalsError, match=attribute):
            replay_buffer_state(SimpleNamespace())
    finally:
        monkeypatch.undo()
        torchrl_state._require_torchrl_internals.cache_clear()
