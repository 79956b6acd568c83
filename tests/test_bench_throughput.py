"""bench/throughput.py: the reference rows run the pinned 2026-12-05 configuration, rows with the
same config run once, a row's time split adds up to its wall time and its rates are positive,
and a row runs in its own process (a failing one is reported, not fatal)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.conftest import SHORT_SESSIONS, load_bench

throughput = load_bench("throughput")

#: What the reference rows say they are (conf/algo/*.yaml, conf/config.yaml on 2026-12-05).
REFERENCE_VALUES = {
    "dqn": {"num_envs": 8, "frames_per_batch": 256, "updates_per_batch": 4, "batch_size": 64,
            "buffer_size": 100_000, "learning_starts": 2000, "n_steps": 32},
    "ppo": {"num_envs": 32, "frames_per_batch": 2048, "ppo_epochs": 4, "minibatch_size": 256},
}

#: A small, fast row: the smoke preset's rollouts, short sessions, 16 evaluation users.
SMOKE = ["debug=smoke", SHORT_SESSIONS]


@pytest.fixture(autouse=True)
def _restore_loggers_and_threads() -> Iterator[None]:
    """The script's quiet() raises Lightning's and TorchRL's log levels, and a row sets torch's
    threads: put them back."""
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "torchrl")
    levels = {name: logging.getLogger(name).level for name in names}
    threads = torch.get_num_threads()
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    torch.set_num_threads(threads)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_reference_row_runs_the_pinned_configuration(algo: str) -> None:
    args = throughput.parse_args(["--algos", algo, "--widths", "64", "--quick"])
    rows, _ = throughput.plan_rows(args)
    reference = next(row for row in rows if throughput.REFERENCE_LABEL in row.labels)
    assert reference.encoder == "bert_tiny"
    assert set(throughput.REFERENCE[algo]) <= set(reference.overrides)
    cfg = throughput.compose(algo, reference.overrides)
    assert {key: cfg.algo[key] for key in REFERENCE_VALUES[algo]} == REFERENCE_VALUES[algo]
    assert cfg.encoder.hidden_size == 64 and cfg.encoder.num_layers == 2  # bert_tiny
    assert (cfg.evaluation.every_n_steps, cfg.evaluation.num_users) == (250, 200)
    assert reference.width == REFERENCE_VALUES[algo]["num_envs"]
    # The width row keeps the default config's rollout length, at 64 users.
    wide = next(row for row in rows if "width 64" in row.labels)
    default = throughput.compose(algo, [])
    rollout_length = default.algo.frames_per_batch // default.algo.num_envs
    assert (wide.width, wide.frames_per_rollout) == (64, 64 * rollout_length)
    assert wide.steps % wide.updates_per_rollout == 0 and wide.rollouts >= 1
    # Configs that compose the same are one run with all their labels.
    assert len({tuple(row.overrides) for row in rows}) == len(rows)
    assert sum(len(row.labels) for row in rows) == 3  # reference, default, width 64


def test_linear_batch_scaling_keeps_updates_per_rollout() -> None:
    args = throughput.parse_args(["--algos", "ppo", "--widths", "8", "128", "--quick",
                                  "--batch-scaling", "linear"])
    rows, _ = throughput.plan_rows(args)
    default = next(row for row in rows if "default" in row.labels)
    for width in (8, 128):
        row = next(row for row in rows if f"width {width}" in row.labels)
        assert row.updates_per_rollout == default.updates_per_rollout


def test_overrides_merge_with_the_later_winning() -> None:
    merged = throughput.merge_overrides(["encoder=bert_tiny", "algo.num_envs=8"],
                                        ["encoder=bert_small"], ["+extra=1"])
    assert merged == ["algo.num_envs=8", "encoder=bert_small", "+extra=1"]


def smoke_row(algo: str, steps: int, overrides: list[str] = ()) -> "throughput.Row":
    row = throughput.Row(algo, "width 8", "cpu", "bert_tiny", [*SMOKE, *overrides])
    row.steps = steps
    row.threads = 1  # as the script's rows run (steadier on a busy machine); put back after
    return row


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_row_time_split_adds_up_to_its_wall_time(algo: str) -> None:
    """One small row in this process: positive rates, phases that add up to the wall time
    (none negative: no time counted twice), the run's own frame counter accounted for, and a
    table line for it."""
    row = smoke_row(algo, steps=8)
    result = throughput.run_row(row.spec())
    assert result["steps"] == 8
    assert result["frames_per_s"] > 0 and result["updates_per_s"] > 0
    assert result["frames_per_s_without_evaluation"] > result["frames_per_s"]
    seconds = result["seconds"]
    assert set(seconds) == set(throughput.PHASES)
    assert all(value >= 0 for value in seconds.values()), seconds
    assert sum(seconds.values()) == pytest.approx(result["wall_s"], rel=1e-6)
    assert seconds["collect"] > 0 and seconds["update"] > 0 and seconds["evaluation"] > 0
    assert result["evaluations"] == 2  # before the first step and after the last (every 10)
    assert result["frames_recorded"] == result["frames_counted"]  # module.frames
    assert result["frames"] + result["ahead_frames"] == result["frames_counted"]
    assert result["updates_per_s"] == pytest.approx(8 / result["wall_s"])
    row.result = {**result, "process_s": 0.0}
    line = throughput.table([row])[-1]
    assert line.startswith(f"| {algo} | width 8 | cpu |") and "failed" not in line


@pytest.mark.slow
def test_rows_run_in_their_own_process_and_a_failing_row_is_reported(tmp_path: Path) -> None:
    ok = throughput.run_in_subprocess(smoke_row("dqn", steps=4), timeout=300)
    assert ok["steps"] == 4 and ok["frames_per_s"] > 0 and ok["peak_rss_mb"] > 0
    failed = throughput.run_in_subprocess(smoke_row("dqn", 4, ["algo.num_envs=3"]), timeout=300)
    assert "multiple of" in failed["error"]  # frames_per_batch 16 over 3 users, refused
