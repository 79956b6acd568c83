"""Sweeps end to end: a Hydra multirun into one folder (each job its own W&B run), the sweep
report with the jobs' numbers, and an Optuna study that resumes from its SQLite storage."""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path

import matplotlib.image
import pytest

from recrl import report
from recrl.sweeps import sweep_group
from tests.conftest import read_results, run_recrl

SEEDS = (0, 1)
T_95_ONE_DOF = 12.706  # two seeds
#: Sessions of ~20 steps instead of ~200: every evaluation, hence every run, is much faster.
SHORT_SESSIONS = "env.time_budget=20"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``-m seed=0,1 debug=smoke logger=[csv,wandb]`` (W&B offline) into its own folder."""
    root = tmp_path_factory.mktemp("sweep")
    wandb_home = tmp_path_factory.mktemp("wandb_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_DIR", raising=False)  # W&B runs in their job folders
        for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
            mp.setenv(var, str(wandb_home / var.lower()))
        proc = run_recrl(
            root / "single_run_dir_unused", "hydra.mode=MULTIRUN",  # run_recrl takes no -m
            f"hydra.sweep.dir={root / 'sweep'}",
            f"seed={','.join(map(str, SEEDS))}", "debug=smoke", "logger=[csv,wandb]",
            SHORT_SESSIONS,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in root.iterdir()] == ["sweep"]  # one sweep folder, nothing else
    return root / "sweep"


@pytest.mark.slow
@pytest.mark.e2e
def test_multirun_leaves_one_folder_with_a_complete_job_per_seed(sweep: Path) -> None:
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    for seed, job in zip(SEEDS, jobs):
        assert (job / ".hydra" / "overrides.yaml").read_text().count(f"seed={seed}") == 1
        assert read_results(job)["seed"] == seed
        assert (job / "metrics.csv").is_file() and (job / "checkpoints" / "last.ckpt").is_file()
        assert not (job / "FAILED").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_each_job_is_its_own_wandb_run_grouped_by_sweep(sweep: Path) -> None:
    run_ids = set()
    for seed in SEEDS:
        (folder,) = (sweep / str(seed) / "wandb").glob("offline-run-*")
        (records,) = folder.glob("run-*.wandb")
        run_ids.add(records.stem)
        data = records.read_bytes()
        assert sweep_group(sweep).encode() in data  # the group
        assert f"seed={seed}".encode() in data  # tag and name from the overrides
        assert b"val/return" in data and b"train/loss" in data
        assert b"final/agent/return_mean" in data
    assert len(run_ids) == len(SEEDS)  # no job logged into another's run


def summary_row(markdown: str) -> dict[str, str]:
    """The summary table's one row (one configuration), by column name."""
    lines = markdown.split("## Summary")[1].strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    (row,) = lines[2:3]
    return dict(zip(header, (c.strip() for c in row.strip("|").split("|"))))


@pytest.mark.slow
@pytest.mark.e2e
def test_report_holds_the_numbers_of_the_jobs_results(sweep: Path, tmp_path: Path) -> None:
    assert report.main([str(sweep), "--out", str(tmp_path)]) == 0
    markdown = (tmp_path / "report.md").read_text()
    results = [read_results(sweep / str(s)) for s in SEEDS]
    row = summary_row(markdown)
    assert row["configuration"] == f"debug=smoke, logger=[csv,wandb], {SHORT_SESSIONS}"
    assert row["seeds"] == "0, 1"
    for policy in ["agent", *results[0]["baselines"]]:
        values = [r["agent"] if policy == "agent" else r["baselines"][policy] for r in results]
        returns = [v["return_mean"] for v in values]
        mean = statistics.mean(returns)
        ci = T_95_ONE_DOF * statistics.stdev(returns) / math.sqrt(len(returns))
        assert row[policy] == f"{mean:.1f} ± {ci:.1f}", policy
        for seed, value in zip(SEEDS, returns):
            assert f"seed {seed}: {value:.1f}" in markdown
    assert "2 jobs: 2 complete, 0 failed" in markdown


@pytest.mark.slow
@pytest.mark.e2e
def test_report_plot_draws_the_evaluation_curve(sweep: Path, tmp_path: Path) -> None:
    jobs = report.load_jobs(sweep)
    report.label_configurations(jobs)
    assert report.plot_report(jobs, tmp_path / "report.png") == 1  # one configuration
    image = matplotlib.image.imread(tmp_path / "report.png")
    assert image.shape[0] > 300 and image.shape[1] > 500
    assert image[..., :3].std() > 0.05  # not a blank canvas
    assert all(len(job.curve) == 3 for job in jobs)  # before training, at step 10 and 20


@pytest.mark.slow
@pytest.mark.e2e
def test_report_lists_failed_and_never_started_jobs(sweep: Path, tmp_path: Path) -> None:
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("wandb", "checkpoints"))
    (copy / "1" / "results.json").unlink()
    (copy / "1" / "FAILED").write_text("run failed: RuntimeError('boom')\n")
    # As if the sweep had asked for a third seed and stopped before it.
    multirun = copy / "multirun.yaml"
    multirun.write_text(multirun.read_text().replace("seed=0,1", "seed=0,1,2"))
    assert report.main([str(copy)]) == 0
    markdown = (copy / "report.md").read_text()
    assert "3 jobs: 1 complete, 1 failed, 0 unfinished, 1 never started" in markdown
    assert (f"| `1` | `seed=1 debug=smoke logger=[csv,wandb] {SHORT_SESSIONS}` | failed "
            "| run failed: RuntimeError('boom') |") in markdown
    assert (f"| `2` | `seed=2 debug=smoke logger=[csv,wandb] {SHORT_SESSIONS}` "
            "| never started |") in markdown


@pytest.mark.slow
@pytest.mark.e2e
def test_wandb_report_says_in_one_line_that_it_cannot_offline(
    sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert report.main([str(sweep), "--out", str(tmp_path), "--wandb"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no W&B Report" in err[0] and "offline" in err[0]
    assert (tmp_path / "report.md").is_file()  # the local report is still written


def test_wandb_report_plots_the_sweep_group_by_configuration() -> None:
    pytest.importorskip("wandb_workspaces")
    built = report.wandb_report("recrl", "someone", "2026-01-31/12-00-00", "# table")
    grid = built.blocks[0]
    assert grid.runsets[0].project == "recrl"
    assert "2026-01-31/12-00-00" in str(grid.runsets[0].filters)
    plot = grid.panels[0]
    assert (plot.x, plot.y, plot.groupby_rangefunc) == ("val/frames", ["val/return"], "minmax")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``hparams_search=dqn_optuna``: 3 trials, then the same command again for 1 more."""
    root = tmp_path_factory.mktemp("optuna")
    for trials in (3, 1):
        proc = run_recrl(
            root / "single_run_dir_unused", "hparams_search=dqn_optuna", "debug=smoke",
            "trainer.max_steps=10", SHORT_SESSIONS,  # the study, not the agent, is under test
            f"hydra.sweeper.n_trials={trials}", f"hydra.sweep.dir={root / 'study'}",
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "study"


@pytest.mark.slow
@pytest.mark.e2e
def test_optuna_study_resumes_from_its_sqlite_storage(study: Path) -> None:
    optuna = pytest.importorskip("optuna")
    loaded = optuna.load_study(study_name="dqn_synthetic",
                               storage=f"sqlite:///{study / 'optuna.db'}")
    assert [t.state.name for t in loaded.trials] == ["COMPLETE"] * 4
    # The objective is each trial's validation return (what recrl.run returns), never a
    # number of the test users.
    trials = sorted(p for p in study.iterdir() if (p / "results.json").is_file())
    assert len(trials) == 4
    returns = sorted(read_results(p)["selected_weights"]["val_return"]
                     for p in trials)
    assert sorted(t.value for t in loaded.trials) == pytest.approx(returns)
    assert loaded.direction.name == "MAXIMIZE"
    assert report.main([str(study)]) == 0
    markdown = (study / "report.md").read_text()
    assert "4 jobs: 4 complete" in markdown and "## Optuna" in markdown
