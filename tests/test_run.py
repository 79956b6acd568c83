"""The entry point end to end: what a run writes, and how bad input ends."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.conftest import (
    CONF_DIR, SHORT_SESSIONS, compose_config, read_results, run_recrl, run_recrl_in_process,
)

METRIC_KEYS = {"return_mean", "return_ci95", "clicks_mean", "ctr", "episode_length", "coverage"}


#: Frames a debug=smoke run collects for its 20 optimiser steps, per algorithm (Lightning may
#: prefetch one rollout more). DQN: 16-frame rollouts, 2 updates each once 32 frames are in the
#: buffer -> 11 rollouts. PPO: 32-frame rollouts, 2 epochs x 2 minibatches -> 5 rollouts.
SMOKE_FRAMES = {"dqn": (176, 192), "ppo": (160, 192)}


@pytest.fixture(scope="module", params=sorted(SMOKE_FRAMES))
def algo(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, algo: str) -> Path:
    run_dir = tmp_path_factory.mktemp(f"smoke_{algo}") / "run"
    proc = run_recrl(run_dir, "debug=smoke", SHORT_SESSIONS, f"algo={algo}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_run_writes_every_output(smoke_run: Path, algo: str) -> None:
    assert (smoke_run / ".hydra" / "config.yaml").is_file()
    assert (smoke_run / "checkpoints" / "last.ckpt").is_file()
    assert (smoke_run / "evaluation_return.png").stat().st_size > 1000
    assert not (smoke_run / "FAILED").exists()
    results = read_results(smoke_run)
    assert METRIC_KEYS <= results["agent"].keys()
    assert set(results["baselines"]) == {"random", "popular", "oracle_myopic"}
    for stats in results["baselines"].values():
        assert METRIC_KEYS <= stats.keys()
        # The paired gap's mean is the difference of the means (same users on both sides).
        assert stats["agent_gap_mean"] == pytest.approx(
            results["agent"]["return_mean"] - stats["return_mean"])
        assert stats["agent_gap_ci95"] >= 0
    # Every test user's return, for comparing runs user by user (python -m recrl.compare).
    test_returns = json.loads((smoke_run / "test_returns.json").read_text())
    assert set(test_returns["returns"]) == {"agent", *results["baselines"]}
    agent_returns = test_returns["returns"]["agent"]
    assert len(agent_returns) == results["agent"]["num_users"]
    assert sum(agent_returns) / len(agent_returns) == pytest.approx(results["agent"]["return_mean"])
    population = test_returns["population"]
    assert population["num_users"] == len(agent_returns)
    assert population["env"]["_target_"] == "recrl.envs.InterestEvolutionEnv"
    assert results["optimizer_steps"] == 20
    assert results["frames"] in SMOKE_FRAMES[algo]
    assert results["wall_time_s"] > results["validation_time_s"] > 0
    # What it ran on: numbers from different CPUs may differ (recrl/machine.py).
    machine = results["machine"]
    assert machine["cpu"] and machine["cpu_threads"] >= 1 and machine["processes"] == 1
    # hardware=auto, the default: the GPU where PyTorch sees one, else the CPU.
    assert machine["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    assert ("gpu" in machine) == (machine["device"] == "cuda")
    assert machine["torch"] == torch.__version__
    # The myopic oracle knows the users: it must beat the uniformly random policy.
    oracle, random = results["baselines"]["oracle_myopic"], results["baselines"]["random"]
    assert oracle["return_mean"] - oracle["return_ci95"] > random["return_mean"]
    assert random["coverage"] > 0.5  # 32 users x ~30 random picks cover most of 500 items


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_run_logs_train_and_val_metrics(smoke_run: Path) -> None:
    with open(smoke_run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"train/loss", "train/frames", "val/return", "val/frames"} <= columns
    val_returns = [r["val/return"] for r in rows if r["val/return"]]
    assert len(val_returns) == 3  # before training, at step 10 and at step 20


@pytest.mark.slow
@pytest.mark.e2e
def test_checkpoint_holds_model_and_click_counts(smoke_run: Path) -> None:
    ckpt = torch.load(smoke_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    assert state["frames"].item() > 0
    assert state["item_clicks"].sum() > 0
    assert any(k.startswith("encoder.bert.") for k in state)


def test_last_checkpoint_holds_the_final_step_between_periodic_saves(tmp_path: Path) -> None:
    # debug=smoke saves every 10 steps; a 15-step run still ends with its step-15 state.
    assert run_recrl_in_process(tmp_path / "run", "debug=smoke", SHORT_SESSIONS,
                                "trainer.max_steps=15") is None
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 15


def test_the_progress_bar_can_be_turned_off(tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    # Lightning refuses enable_progress_bar=false beside a progress-bar callback; the run must
    # then leave its own step bar out (and draw it by default).
    for name, flag in (("off", "false"), ("on", "true")):
        assert run_recrl_in_process(tmp_path / name, "debug=smoke", SHORT_SESSIONS,
                                    "trainer.max_steps=3",
                                    f"trainer.enable_progress_bar={flag}") is None
        captured = capfd.readouterr()
        drawn = "Training" in captured.out + captured.err
        assert drawn == (flag == "true")


@pytest.mark.slow
@pytest.mark.e2e
def test_same_seed_same_metrics(smoke_run: Path, algo: str, tmp_path: Path) -> None:
    # The second run trains in this process (no second interpreter start-up): same seed, same
    # numbers, whichever process runs it.
    assert run_recrl_in_process(tmp_path / "again", "debug=smoke", SHORT_SESSIONS,
                                f"algo={algo}") is None
    first = read_results(smoke_run)
    second = read_results(tmp_path / "again")
    assert first["agent"] == second["agent"]
    assert first["baselines"] == second["baselines"]


@pytest.mark.parametrize("greedy", [[], ["algo.greedy_network=target"]], ids=["online", "target"])
def test_select_best_evaluates_the_best_validation_weights(tmp_path: Path, greedy: list[str]) -> None:
    """evaluation.select=best: the agent row uses the weights of the best validation point, the
    final weights are reported too, and the kept weights really are the ones validated there
    (with greedy_network=target, the target network's too)."""
    from recrl.baselines import MostPopularRecommender
    from recrl.evaluation import evaluate_policy
    from recrl.build import build_module
    from recrl.results import select_weights

    run_dir = tmp_path / "run"
    # 25 steps: the grid evaluates at 0, 10 and 20; the end adds a point at 25.
    overrides = ["debug=smoke", "evaluation.select=best", "trainer.max_steps=25",
                 "evaluation.final_num_users=8", "env.time_budget=50", *greedy]
    assert run_recrl_in_process(run_dir, *overrides) is None
    results = read_results(run_dir)
    with open(run_dir / "metrics.csv") as f:
        curve = {int(r["step"]): float(r["val/return"]) for r in csv.DictReader(f) if r["val/return"]}
    assert sorted(curve) == [0, 10, 20, 25]
    selected = results["selected_weights"]
    assert selected["rule"] == "best"
    assert selected["step"] == max(curve, key=curve.get)
    assert selected["val_return"] == pytest.approx(max(curve.values()))
    assert METRIC_KEYS <= results["agent_last"].keys()

    # The best weights, kept in the checkpoint, give the validation return they were chosen by.
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    best = next(state["best"] for key, state in checkpoint["callbacks"].items()
                if key.startswith("PeriodicEvaluation"))
    cfg = compose_config(*overrides)
    module, _ = build_module(cfg)
    select_weights(module, SimpleNamespace(best=best), "best")  # as the run loads them
    module.eval()
    env = module.make_env(cfg.evaluation.num_users, seed=cfg.evaluation.val_seed, split="validation")
    again = evaluate_policy(env, module.greedy_policy, max_steps=cfg.evaluation.max_steps)
    assert again["return_mean"] == pytest.approx(selected["val_return"])

    # `popular` ranks the clicks up to the selected step (the agent's frames), not the whole run's.
    final_clicks = checkpoint["state_dict"]["item_clicks"]
    assert (best["item_clicks"] <= final_clicks).all()
    if selected["step"] == 25:
        assert torch.equal(best["item_clicks"], final_clicks)
    popular = evaluate_policy(
        module.make_env(8, seed=cfg.evaluation.seed, split="test"),
        MostPopularRecommender(module.item_clicks), max_steps=cfg.evaluation.max_steps,
    )
    assert popular["return_mean"] == pytest.approx(results["baselines"]["popular"]["return_mean"])


def test_the_data_group_chooses_the_log_of_a_logged_env() -> None:
    """data.* (conf/data/) is the log and its preprocessing; the env chooses the data config and
    passes its values to LoggedEnv, and command-line data.* overrides reach the env."""
    from omegaconf import OmegaConf

    synthetic = compose_config()
    ml100k = compose_config("env=ml100k", "data.min_rating=4")
    beauty = compose_config("env=beauty")
    logged = compose_config("env=logged", "data.path=log.csv", "data.format=table",
                            "data.columns.rating=stars", "data.split_seed=7",
                            "data.cache_dir=/tmp/c")
    assert "data" not in synthetic  # the synthetic simulator reads no log
    for cfg in (ml100k, beauty, logged):  # the env reads the data node itself, not a copy
        assert OmegaConf.to_container(cfg.env, resolve=False)["data"] == "${data}"
        assert cfg.env.data == cfg.data
    assert ml100k.env.data.path.endswith("/ml-100k") and ml100k.env.data.format == "ml-100k"
    assert ml100k.env.data.min_rating == 4 and ml100k.env.data.min_item_interactions == 5
    assert beauty.env.data.path.endswith("amazon-beauty/beauty.txt")
    assert beauty.env.data.format == "sequences" and beauty.env.data.min_item_interactions == 1
    assert beauty.env.fit_batch_size == 65536
    data = logged.env.data
    assert (data.path, data.format, data.split_seed, data.cache_dir) == ("log.csv", "table", 7, "/tmp/c")
    # The table's columns default to the reader's names; one of them is renamed here.
    assert dict(data.columns) == {"user": "user", "item": "item",
                                  "timestamp": "timestamp", "rating": "stars"}


def test_every_data_setting_is_one_the_logged_env_reads() -> None:
    """Each data config's keys are DataConfig's fields: a knob added to the data group alone,
    which LoggedEnv would never read, fails here (and LoggedEnv refuses it by name)."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    from recrl.data import DataConfig

    known = {field.name for field in fields(DataConfig)}
    for path in (CONF_DIR / "data").glob("*.yaml"):
        keys = set(OmegaConf.load(path)) - {"defaults"}
        assert keys <= known, f"{path.name} has {keys - known}, which DataConfig does not read"
    assert set(OmegaConf.load(CONF_DIR / "data" / "logged.yaml")) == known
    with pytest.raises(ValueError, match="data.colour is not a data setting"):
        DataConfig.from_mapping({"path": "x", "format": "table", "colour": "red"})


#: Bad input the CLI must refuse with one line: (overrides, a phrase the message must contain).
BAD_INPUT = [
    (["algo=nonexistent"], "algo"),
    (["env.num_items=-5"], "num_items"),
    (["env.history_length=0"], "history_length"),
    (["hardware=gpu"], "GPU"),
    (["trainer.accelerator=gpu", "trainer.devices=4"], "GPU"),
    (["hardware=cpu", "trainer.devices=4"], "hardware=auto"),  # one CPU process pinned
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["algo=ppo", "algo.minibatch_size=100000"], "algo.minibatch_size"),
    (["algo=ppo", "algo.advantages=never"], "algo.advantages"),
    (["env=ml100k", "data.path=/nonexistent/ml-100k"], "python -m recrl.data download"),
    (["env=logged"], "data.path and data.format not set"),
    (["env=logged", "data.path=my_log.csv"], "data.format not set"),
    (["data=ml100k"], "read by the logged-data envs only"),
    (["env=ml100k", "env.data={path: /elsewhere}"], "set data.<key> instead of env.data.<key>"),
    (["algo=pretrain"], "learns from logged sequences"),
    (["encoder.init_from=/nonexistent.ckpt"], "encoder.init_from"),
    (["encoder=bert_text"], "needs item text"),
    (["trainer.gradient_clip_val=1.0"], "algo.max_grad_norm"),
    (["evaluation.select=median"], "evaluation.select"),
    (["algo.greedy_network=average"], "algo.greedy_network"),
    (["env.slate_size=0"], "env.slate_size must be an integer >= 1"),
    (["env.slate_size=3", "env.num_candidates=2", "algo=slateq"], "larger than env.num_candidates"),
    (["env.slate_size=2"], "algo=dqn recommends one item per step"),
    (["algo=slateq"], "algo=slateq recommends slates, but env.slate_size=1"),
    (["evaluation.val_seed=1000003"], "evaluation.val_seed"),
]
#: The case that also runs through a real ``python -m recrl.run`` process: an unknown config
#: choice (Hydra's own error path, before recrl's code). Every other case takes recrl's one path
#: for rejected values (ConfigurationError -> one line), tested in process here and through a
#: real CLI process in test_a_bad_job_in_a_sweep_fails_alone.
BAD_INPUT_CLI = [0]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize(("overrides", "expected"), [BAD_INPUT[i] for i in BAD_INPUT_CLI])
def test_bad_input_ends_with_one_clear_error(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    run_dir = tmp_path / "run"
    proc = run_recrl(run_dir, "debug=smoke", *overrides, timeout=120)
    assert proc.returncode != 0
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert not (run_dir / "results.json").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [case for i, case in enumerate(BAD_INPUT) if i not in BAD_INPUT_CLI and i != 0],
)
def test_bad_value_ends_with_one_configuration_error(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    """Every bad value through the run's own entry function (composed as the CLI would):
    a one-line ``recrl: configuration error: ...`` exit, FAILED written, no results."""
    run_dir = tmp_path / "run"
    message = run_recrl_in_process(run_dir, "debug=smoke", *overrides)
    assert message is not None and message.startswith("recrl: configuration error:"), message
    assert expected in message
    assert (run_dir / "FAILED").is_file()
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_a_bad_job_in_a_sweep_fails_alone(tmp_path: Path) -> None:
    """A configuration error ends its own multirun job (FAILED, no results.json), not the sweep."""
    sweep = tmp_path / "sweep"
    proc = run_recrl(tmp_path / "unused", "hydra.mode=MULTIRUN", f"hydra.sweep.dir={sweep}",
                     "debug=smoke", SHORT_SESSIONS, "env.num_items=-5,60", timeout=300)
    assert proc.returncode != 0  # the sweep as a whole reports the failure
    assert "env.num_items" in proc.stderr or "num_items" in proc.stderr
    assert (sweep / "0" / "FAILED").is_file() and not (sweep / "0" / "results.json").exists()
    assert (sweep / "1" / "results.json").is_file()  # the next job still ran


def test_the_data_settings_default_as_the_preprocessing_does() -> None:
    """DataConfig (the config node) and PreprocessConfig (what preprocessing reads) share their
    preprocessing fields: the same names and the same defaults, so the one built from the other
    never changes a setting."""
    from dataclasses import MISSING, fields

    from recrl.data import DataConfig, PreprocessConfig

    data_defaults = {f.name: f.default for f in fields(DataConfig)}
    for field in fields(PreprocessConfig):
        assert field.name in data_defaults, f"DataConfig lacks {field.name}"
        assert data_defaults[field.name] == field.default != MISSING, field.name
    assert DataConfig(path="x", format="table").preprocess == PreprocessConfig()
