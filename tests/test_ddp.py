"""Two-process DDP on CPU (hardware=ddp_cpu): ranks step together, agree on weights, differ in data.

Lightning's ``ddp`` re-executes the command line for every extra process, so training runs as a
subprocess (``run_recrl``). Each rank writes a test-only dump (``RECRL_TEST_DUMP_RANKS``, see
``lightning_modules/online.py``): its final weights, its own frame count and its first rollout.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.online import RANK_DUMP_ENV
from recrl.run import log_file_suffix
from tests.conftest import (
    REPO_ROOT, read_results, recrl_command, run_process, run_recrl, run_recrl_in_process,
    subprocess_env,
)

WORLD_SIZE = 2

#: Frames one rank collects in a debug=smoke run of 20 optimiser steps (one prefetched rollout
#: more or not). DQN: 16-frame rollouts; algo.learning_starts=32 counts the frames of both ranks,
#: so updates (2 per rollout) start after the first rollout -> 10-11 rollouts. PPO: 32-frame
#: rollouts, 4 minibatches each -> 5-6 rollouts, as in a single process.
RANK_FRAMES = {"dqn": (160, 176), "ppo": (160, 192)}
#: How each algorithm's 2-process run starts: Lightning's own launcher (one command, the second
#: process re-runs it), or docs/scaling_out.md's multi-node torchrun command with 2 one-process
#: "machines" on localhost (trainer.num_nodes=2).
LAUNCH = {"dqn": "lightning", "ppo": "torchrun"}


@pytest.fixture(scope="module", params=sorted(RANK_FRAMES))
def algo(request: pytest.FixtureRequest) -> str:
    return request.param


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_on_two_machines_through_torchrun(run_dir: Path, *overrides: str) -> None:
    """docs/scaling_out.md's multi-node torchrun command, with two "machines" on localhost: one
    torchrun per node (--nnodes=2 --node_rank=0/1, one process each), trainer.num_nodes=2.
    Lightning must take torchrun's processes and start none itself."""
    port = free_port()
    # Both "machines" share this machine's cores: one thread each (Lightning sizes threads per
    # machine, and two 2-thread processes spinning in gloo on 2 cores run ten times slower).
    env = subprocess_env(threads=1)

    def node(rank: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             f"--node_rank={rank}", "--master_addr=127.0.0.1", f"--master_port={port}",
             "-m", "recrl.run", *overrides, "trainer.devices=1", "trainer.num_nodes=2",
             f"hydra.run.dir={run_dir}"],
            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    nodes = [node(0), node(1)]
    outputs = [proc.communicate(timeout=400) for proc in nodes]
    for proc, (_, stderr) in zip(nodes, outputs):
        assert proc.returncode == 0, stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, algo: str) -> Path:
    """DQN: one command, Lightning starts the second process. PPO: two torchrun "machines" of
    one process each (the multi-node path). Every test below holds for both launches."""
    run_dir = tmp_path_factory.mktemp(f"ddp_{algo}") / "run"
    overrides = ["debug=smoke", "env.time_budget=50", f"algo={algo}", "hardware=ddp_cpu"]
    os.environ[RANK_DUMP_ENV] = "1"  # inherited by the subprocesses and by a rank-1 re-run
    try:
        if LAUNCH[algo] == "torchrun":
            run_on_two_machines_through_torchrun(run_dir, *overrides)
        else:
            proc = run_recrl(run_dir, *overrides, f"trainer.devices={WORLD_SIZE}", timeout=400)
            assert proc.returncode == 0, proc.stderr[-3000:]
    finally:
        del os.environ[RANK_DUMP_ENV]
    return run_dir


def rank_dumps(run_dir: Path) -> list[dict]:
    return [torch.load(run_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_writes_one_run_folder_with_one_result(ddp_run: Path) -> None:
    # Rank 1 re-runs the command line: it must write into rank 0's run folder, not a new one.
    assert [p.name for p in ddp_run.parent.iterdir()] == ["run"]
    assert len(list(ddp_run.parent.rglob("results.json"))) == 1
    assert len(list(ddp_run.parent.rglob("config.yaml"))) == 1  # one .hydra/
    assert (ddp_run / "checkpoints" / "last.ckpt").is_file()
    assert (ddp_run / "evaluation_return.png").is_file()
    assert not (ddp_run / "FAILED").exists()
    # One log per process: rank 0's run.log, rank 1's run.rank1.log, nothing interleaved.
    assert sorted(p.name for p in ddp_run.glob("run*.log")) == ["run.log", "run.rank1.log"]


@pytest.mark.parametrize("env, suffix", [
    ({}, ""),  # one process
    ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, ".rank1"),  # Lightning's launcher, one machine
    ({"LOCAL_RANK": "0", "NODE_RANK": "2"}, ".rank2-0"),  # ... on a third machine
    ({"RANK": "0", "LOCAL_RANK": "0"}, ""),  # torchrun
    ({"RANK": "3", "LOCAL_RANK": "1"}, ".rank3"),
    ({"SLURM_PROCID": "5"}, ".rank5"),
])
def test_each_process_names_its_own_log_file(monkeypatch: pytest.MonkeyPatch, env: dict,
                                              suffix: str) -> None:
    for name in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert log_file_suffix() == suffix


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_both_ranks_step_and_frames_are_total(ddp_run: Path, algo: str) -> None:
    dumps = rank_dumps(ddp_run)
    results = read_results(ddp_run)
    assert results["optimizer_steps"] == 20
    low, high = RANK_FRAMES[algo]
    for dump in dumps:
        assert dump["world_size"] == WORLD_SIZE
        assert low <= dump["local_frames"] <= high
    assert results["frames"] == sum(d["local_frames"] for d in dumps)
    assert all(d["frames"] == results["frames"] for d in dumps)


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_evaluation_meets_the_users_of_a_one_process_run(ddp_run: Path) -> None:
    """Rank 0 plays the test users (debug=smoke: 32) and sends the episodes on: every user's
    return under the agent and the baselines is what one process playing the final weights on
    the users of a one-process run gets. The periodic evaluations are played alike."""
    from omegaconf import OmegaConf

    from recrl.baselines import MostPopularRecommender, RandomRecommender
    from recrl.evaluation import play_users
    from recrl.build import build_module

    results = read_results(ddp_run)
    for stats in (results["agent"], *results["baselines"].values()):
        assert stats["num_users"] == 32 and "users_per_process" not in stats
    recorded = json.loads((ddp_run / "test_returns.json").read_text())
    assert "processes" not in recorded["population"]

    cfg = OmegaConf.load(ddp_run / ".hydra" / "config.yaml")
    module, _ = build_module(cfg)
    module.load_state_dict(rank_dumps(ddp_run)[0]["state_dict"])  # the final weights (select=last)
    module.eval()
    policies = {"agent": lambda env: module.greedy_policy,
                "random": lambda env: RandomRecommender(seed=cfg.evaluation.seed),
                "popular": lambda env: MostPopularRecommender(module.item_clicks)}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each DDP process ran: the same sums, the same greedy choices
    try:
        for name, policy in policies.items():
            episodes = play_users(lambda n, s: module.make_env(n, seed=s, split="test"),
                                  policy, num_users=cfg.evaluation.final_num_users,
                                  seed=cfg.evaluation.seed, max_steps=cfg.evaluation.max_steps)
            assert episodes.returns.tolist() == pytest.approx(recorded["returns"][name]), name
    finally:
        torch.set_num_threads(threads)
    with open(ddp_run / "metrics.csv") as f:
        val_rows = [row for row in csv.DictReader(f) if row["val/return"]]
    assert [int(row["step"]) for row in val_rows] == [0, 10, 20]


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_ranks_share_weights_but_not_trajectories(ddp_run: Path) -> None:
    first, second = rank_dumps(ddp_run)
    assert first["state_dict"].keys() == second["state_dict"].keys()
    different = [k for k, v in first["state_dict"].items() if not torch.equal(v, second["state_dict"][k])]
    assert different == []
    # Each rank simulates its own users (seed + rank): the first rollouts already differ.
    rollout_0, rollout_1 = first["first_rollout"], second["first_rollout"]
    assert not torch.equal(rollout_0["reward"], rollout_1["reward"])


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_popular_baseline_counts_every_ranks_clicks(ddp_run: Path) -> None:
    ckpt = torch.load(ddp_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    first, second = rank_dumps(ddp_run)
    # Reduced at the end of training on every rank, and in the checkpoint rank 0 writes.
    assert torch.equal(first["state_dict"]["item_clicks"], second["state_dict"]["item_clicks"])
    assert torch.equal(ckpt["state_dict"]["item_clicks"], first["state_dict"]["item_clicks"])
    assert ckpt["state_dict"]["frames"].item() == first["frames"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["hardware=cpu", "trainer.devices=2"], "hardware=ddp_cpu"),  # one process pinned
        (["hardware=ddp"], "GPU"),
    ],
)
def test_ddp_bad_hardware_ends_with_one_clear_error(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    # In process (tests/test_run.py runs the same one-line exit through a real CLI process).
    message = run_recrl_in_process(tmp_path / "run", "debug=smoke", *overrides)
    assert message is not None and message.startswith("recrl: configuration error:"), message
    assert expected in message


@pytest.mark.slow
@pytest.mark.e2e
def test_ddp_multirun_leaves_one_sweep_folder_with_complete_jobs(tmp_path: Path) -> None:
    # Run from an empty folder with the default sweep folder (outputs/multirun/<date>/<time>),
    # the one rank 1's re-run would resolve anew: it must land in rank 0's sweep folder.
    proc = run_process(
        recrl_command("-m", "debug=smoke", "env.time_budget=50", "algo=dqn", "hardware=ddp_cpu",
                      f"trainer.devices={WORLD_SIZE}", "seed=0,1"),
        cwd=tmp_path, env=subprocess_env(**{RANK_DUMP_ENV: "1"}), timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = [p for p in (tmp_path / "outputs" / "multirun").glob("*/*") if p.is_dir()]
    assert len(sweeps) == 1, sweeps
    assert sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == ["0", "1"]
    assert len(list(tmp_path.rglob("results.json"))) == 2
    for job, seed in (("0", 0), ("1", 1)):
        job_dir = sweeps[0] / job
        results = read_results(job_dir)
        assert results["seed"] == seed and results["optimizer_steps"] == 20
        assert (job_dir / "checkpoints" / "last.ckpt").is_file()
        first, second = rank_dumps(job_dir)
        assert results["frames"] == first["local_frames"] + second["local_frames"]
        assert all(torch.equal(v, second["state_dict"][k]) for k, v in first["state_dict"].items())

