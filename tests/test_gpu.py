"""Training and simulation on a CUDA GPU (``hardware=gpu`` / ``hardware=ddp``, and the default
``hardware=auto``, which picks the GPU).

CI has no GPU, so every test here skips there; they run wherever PyTorch sees one
(``python -m pytest -q tests/test_gpu.py``). What they hold: the simulators step on the GPU
without a tensor left on the CPU, and whole runs train on the GPU (the module, its simulator and
collector there, the replay buffer in CPU memory) and write the results a CPU run writes.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tensordict import TensorDictBase

from recrl.envs import InterestEvolutionEnv, LoggedEnv, uniform_valid_action
from tests.conftest import (
    ML100K, SHORT_SESSIONS, needs_ml100k, read_results, run_recrl, run_recrl_in_process,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU visible to PyTorch (CI has none)")


def play_random_steps(env, steps: int) -> TensorDictBase:
    """``steps`` steps of valid random actions (finished users restart); every tensor the env
    returns must be on its GPU, and every shown item masked in the next observation."""
    generator = torch.Generator(env.device).manual_seed(0)

    def policy(td: TensorDictBase) -> TensorDictBase:
        return td.set("action", uniform_valid_action(td["action_mask"], generator))

    rollout = env.rollout(steps, policy, break_when_any_done=False)  # [B, steps]
    for tensor in rollout.values(include_nested=True, leaves_only=True):
        assert tensor.device == env.device
    shown = rollout["action"].unsqueeze(-1)
    assert not rollout["next", "action_mask"].gather(-1, shown).any()
    assert torch.isfinite(rollout["next", "reward"]).all()
    assert rollout["next", "done"].any()  # some users finished and were reset on the GPU
    return rollout


def test_synthetic_users_step_on_the_gpu() -> None:
    env = InterestEvolutionEnv(256, num_items=500, seed=0, time_budget=20.0, device="cuda")
    assert env.device.type == "cuda"
    play_random_steps(env, 20)


@needs_ml100k
def test_logged_users_step_on_the_gpu(tmp_path: Path) -> None:
    options = dict(data={"path": str(ML100K), "format": "ml-100k", "cache_dir": str(tmp_path)},
                   seed=0)
    gpu = LoggedEnv(256, device="cuda", **options)
    cpu = LoggedEnv(256, device="cpu", **options)
    # The fitted world is the same; only where a step reads it differs.
    assert gpu.users.taste.item_vectors.device.type == "cuda"
    torch.testing.assert_close(gpu.users.taste.item_vectors.cpu(), cpu.users.taste.item_vectors)
    assert gpu.users.boredom_distance == cpu.users.boredom_distance
    rollout = play_random_steps(gpu, 40)
    assert ((rollout["next", "reward"] >= 0) & (rollout["next", "reward"] <= 5)).all()
    # Users come from the training split only.
    assert not gpu.sequences.heldout_users[gpu.users.user.cpu()].any()


def gpu_run(run_dir: Path, *overrides: str) -> dict:
    """A debug=smoke run on hardware=gpu in this process: its results, after checking that the
    GPU did the training (memory was allocated on it)."""
    torch.cuda.reset_peak_memory_stats()
    error = run_recrl_in_process(run_dir, "debug=smoke", "hardware=gpu", *overrides)
    assert error is None, error
    assert torch.cuda.max_memory_allocated() > 0
    results = read_results(run_dir)
    assert results["optimizer_steps"] == 20
    for summary in [results["agent"], *results["baselines"].values()]:
        assert math.isfinite(summary["return_mean"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return results


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_training_runs_on_the_gpu(tmp_path: Path, algo: str) -> None:
    results = gpu_run(tmp_path / "run", SHORT_SESSIONS, f"algo={algo}")
    assert set(results["baselines"]) == {"random", "popular", "oracle_myopic"}


@pytest.mark.parametrize("experiment", ["recsim_slateq", "recsim_slate_ppo"])
def test_slate_training_runs_on_the_gpu(tmp_path: Path, experiment: str) -> None:
    """Slates on the GPU: candidate draws, the choice model, SlateQ / Plackett-Luce, list metrics."""
    results = gpu_run(tmp_path / "run", SHORT_SESSIONS, f"experiment={experiment}")
    assert results["agent"]["slate_size"] == 2 and "slate_ndcg" in results["agent"]


def test_dqn_replay_buffer_lives_on_the_gpu() -> None:
    """Rollouts, the replay buffer and its samples stay on the GPU: no host copy per update."""
    from tests.test_dqn import make_module

    module = make_module(num_envs=64, frames_per_batch=512, batch_size=32, learning_starts=0,
                         n_steps=4).to("cuda")
    collector = module._make_collector()
    batches = list(module.rollout_to_batches(next(iter(collector))))
    assert module.replay_buffer.storage.device.type == "cuda"
    assert all(batch.device.type == "cuda" for batch in batches)
    collector.shutdown()


def test_hardware_auto_trains_on_the_gpu(tmp_path: Path) -> None:
    """The default picks the GPU when PyTorch sees one: one process, no DDP, and results.json
    says so."""
    torch.cuda.reset_peak_memory_stats()
    error = run_recrl_in_process(tmp_path / "run", "debug=smoke", SHORT_SESSIONS, "hardware=auto")
    assert error is None, error
    assert torch.cuda.max_memory_allocated() > 0
    machine = read_results(tmp_path / "run")["machine"]
    assert (machine["device"], machine["processes"]) == ("cuda", 1)
    assert machine["gpu"] and "ddp_backend" not in machine


def test_bf16_mixed_precision_runs(tmp_path: Path) -> None:
    gpu_run(tmp_path / "run", SHORT_SESSIONS, "algo=dqn", "trainer.precision=bf16-mixed")


def test_target_network_greedy_policy_runs_on_the_gpu(tmp_path: Path) -> None:
    gpu_run(tmp_path / "run", SHORT_SESSIONS, "algo=dqn", "algo.greedy_network=target",
            "evaluation.select=best")


@needs_ml100k
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_movielens_training_runs_on_the_gpu(tmp_path: Path, algo: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECRL_DATA_DIR", str(ML100K.parent))
    results = gpu_run(tmp_path / "run", "env=ml100k", f"algo={algo}",
                      f"data.cache_dir={tmp_path / 'cache'}")
    assert {"random", "popular", "popular_log"} <= set(results["baselines"])
    # Offline ranking ran too (after training, on the CPU the model is moved back to).
    assert results["offline_ranking"]["agent"]["full"]["HR@10"] >= 0


@pytest.mark.slow
@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_a_gpu_checkpoint_resumes_exactly_on_the_gpu_and_with_fresh_users_on_the_cpu(
        tmp_path: Path, algo: str) -> None:
    gpu_run(tmp_path / "first", SHORT_SESSIONS, f"algo={algo}")  # last.ckpt at step 20
    checkpoint = f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"
    for hardware in ("gpu", "cpu"):
        run_dir = tmp_path / f"resumed_on_{hardware}"
        error = run_recrl_in_process(run_dir, "debug=smoke", SHORT_SESSIONS, f"algo={algo}",
                                     f"hardware={hardware}", "trainer.max_steps=30", checkpoint)
        assert error is None, error
        results = read_results(run_dir)
        assert results["optimizer_steps"] == 30
        if hardware == "gpu":  # the saved simulation goes on where it stopped
            assert "resumed_with_fresh_users" not in results
        else:  # a CPU generator cannot go on from a GPU generator's state
            assert "ran on cuda, this run simulates on cpu" in results["resumed_with_fresh_users"]


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_on_the_gpu(tmp_path: Path) -> None:
    # One process per visible GPU, NCCL; a subprocess, so the process group dies with it.
    devices = min(torch.cuda.device_count(), 2)
    proc = run_recrl(tmp_path / "run", "debug=smoke", SHORT_SESSIONS, "hardware=ddp",
                     f"trainer.devices={devices}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = read_results(tmp_path / "run")
    assert results["optimizer_steps"] == 20
    assert math.isfinite(results["agent"]["return_mean"])


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_several_devices_are_ddp_over_nccl_on_the_gpus(tmp_path: Path) -> None:
    # hardware=auto (the default) with trainer.devices=2: DDP over NCCL, no CPU processes.
    proc = run_recrl(tmp_path / "run", "debug=smoke", SHORT_SESSIONS, "trainer.devices=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no GPU visible" not in proc.stdout + proc.stderr
    machine = read_results(tmp_path / "run")["machine"]
    assert (machine["device"], machine["processes"], machine["ddp_backend"]) == ("cuda", 2, "nccl")
