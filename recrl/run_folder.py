"""Every file of a run folder, by name: the one place that says what a run writes where.

A run folder (``outputs/<date>/<time>/``, or ``hydra.run.dir=...``) holds:

    .hydra/                  the composed config, its overrides (Hydra)
    run.log                  the run's log (DDP: run.rank<r>.log for the other processes)
    metrics.csv              training and validation metrics (logger=csv)
    checkpoints/last.ckpt    the latest state; ckpt_path=last resumes from it
    checkpoints/last_good.ckpt   the state before a NaN / inf stopped the run
    checkpoints/best.ckpt    pretraining's weights of evaluation.select=best
    checkpoints/policy.pt    a policy run's weights its final evaluation played (serving reads it)
    results.json             the final results (written last, never half-written)
    test_returns.json        every test user's return under the agent and each baseline
    evaluation_return.png    the validation curve beside the baselines
    FAILED                   why the run stopped early (and how to resume), instead of results
    PAUSED                   test-only: a run paused at a known step
"""

from __future__ import annotations

from pathlib import Path

RESULTS_FILE = "results.json"
TEST_RETURNS_FILE = "test_returns.json"
FAILURE_FILE = "FAILED"
PAUSED_FILE = "PAUSED"
EVALUATION_PLOT = "evaluation_return.png"
METRICS_FILE = "metrics.csv"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
LAST_GOOD_CHECKPOINT = "last_good.ckpt"
BEST_CHECKPOINT = "best.ckpt"  # pretraining's weights of evaluation.select=best
POLICY_WEIGHTS = "policy.pt"  # the state dict of the weights the final evaluation played


def checkpoint_path(run_dir: Path | str, name: str = LAST_CHECKPOINT) -> Path:
    """``<run folder>/checkpoints/<name>``."""
    return Path(run_dir) / CHECKPOINT_DIR / name
