"""W&B tracking (recrl/tracking.py): a logged-out run logs offline, with one warning, everything
the issue lists. Each multirun job being its own W&B run is checked with the sweep in
tests/test_report.py, which already runs one."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from recrl.tracking import flatten, wandb_mode
from tests.conftest import read_results, recrl_command, run_process, subprocess_env


@pytest.fixture(scope="module")
def logged_out(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """``logger=wandb`` with no W&B credentials anywhere and no offline flag or WANDB_MODE."""
    root = tmp_path_factory.mktemp("logged_out")
    home = root / "home"  # no ~/.netrc, no ~/.config/wandb
    home.mkdir()
    run_dir, wandb_dir = root / "run", root / "wandb_dir"
    env = {k: v for k, v in subprocess_env().items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(
        HOME=str(home), WANDB_DIR=str(wandb_dir), WANDB_CONFIG_DIR=str(root / "wandb_config"),
        WANDB_CACHE_DIR=str(root / "wandb_cache"), WANDB_DATA_DIR=str(root / "wandb_data"),
    )
    proc = run_process(
        recrl_command(f"hydra.run.dir={run_dir}", "debug=smoke", "logger=wandb",
                      "env.time_budget=20"),  # short sessions: faster evaluations
        env=env, timeout=300,  # a login prompt or a network wait would hang here
    )
    return run_dir, wandb_dir, proc


def offline_run_folder(wandb_dir: Path) -> Path:
    (folder,) = (wandb_dir / "wandb").glob("offline-run-*")
    return folder


@pytest.mark.slow
@pytest.mark.e2e
def test_logged_out_run_falls_back_to_offline_with_one_warning(logged_out) -> None:
    run_dir, wandb_dir, proc = logged_out
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1, warnings
    assert "offline" in warnings[0] and "wandb sync" in warnings[0]
    assert (run_dir / "results.json").is_file()
    assert offline_run_folder(wandb_dir).is_dir()  # WANDB_DIR decides where W&B writes
    assert not (run_dir / "wandb").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_offline_run_holds_metrics_config_results_table_and_plot(logged_out) -> None:
    run_dir, wandb_dir, _ = logged_out
    folder = offline_run_folder(wandb_dir)
    (records,) = folder.glob("run-*.wandb")
    data = records.read_bytes()
    # Train and validation metrics, frames (their x-axis), the composed config, final results.
    for name in (b"train/loss", b"train/frames", b"val/return", b"val/frames", b"val/ctr",
                 b"final/agent/return_mean", b"final/baselines/popular/return_mean",
                 b"final/baselines/oracle_myopic/return_ci95", b"evaluation", b"final_num_users",
                 b"lightning_modules.dqn.DQNModule", b"debug=smoke"):
        assert name in data, name
    media = folder / "files" / "media"
    (plot,) = (media / "images" / "final").glob("evaluation_return_*.png")
    assert plot.stat().st_size > 1000
    (results_table,) = (media / "table" / "final").glob("results_*.table.json")
    rows = {row[0]: row for row in json.loads(results_table.read_text())["data"]}
    results = read_results(run_dir)
    assert rows["agent"][1] == pytest.approx(results["agent"]["return_mean"])
    assert set(rows) == {"agent", *results["baselines"]}
    # One table of example recommendations per evaluation (before training, steps 10 and 20).
    examples = sorted((media / "table" / "examples").glob("recommendations_*.table.json"))
    assert len(examples) == 3
    table = json.loads(examples[-1].read_text())
    assert table["columns"][:3] == ["user", "history (item ids, * = clicked)", "recommended item"]
    assert len(table["data"]) == 4 and all(row[1] and row[2] > 0 for row in table["data"])


def test_flatten_keeps_numbers_under_slash_paths() -> None:
    results = {"agent": {"return_mean": 1.5, "num_users": 3}, "frames": 7, "flag": True,
               "evaluation_protocol": "text", "baselines": {"popular": {"return_mean": 2.0}}}
    assert flatten(results) == {
        "final/agent/return_mean": 1.5, "final/agent/num_users": 3, "final/frames": 7,
        "final/baselines/popular/return_mean": 2.0,
    }


def test_offline_flag_and_local_modes_need_no_login(monkeypatch: pytest.MonkeyPatch) -> None:
    assert wandb_mode(offline=True) == "offline"
    for mode in ("offline", "disabled"):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert wandb_mode(offline=False) is None  # W&B follows WANDB_MODE itself
