"""Shared test helpers: run ``python -m recrl.run`` as a user would, in a throw-away folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensordict import TensorDictBase

REPO_ROOT = Path(__file__).resolve().parents[1]

# Real data for tests: ../shared/data beside the repository, or $RECRL_TEST_DATA. It is read in
# place, never copied into the repository; tests that need it skip, saying why, without it.
DATA_DIR = Path(os.environ.get("RECRL_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
ML100K = DATA_DIR / "ml-100k"
BEAUTY = DATA_DIR / "amazon-beauty" / "beauty.txt"
#: Sessions of a quarter of the default time budget: ~30 recommendations a user instead of ~120,
#: so smoke runs' evaluations are short (what they prove does not depend on session length).
SHORT_SESSIONS = "env.time_budget=50"

needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(),
    reason=f"MovieLens-100K not found at {ML100K} (set RECRL_TEST_DATA to the data folder)",
)
needs_beauty = pytest.mark.skipif(
    not BEAUTY.is_file(),
    reason=f"Amazon Beauty not found at {BEAUTY} (set RECRL_TEST_DATA to the data folder)",
)


@pytest.fixture(autouse=True, scope="session")
def _offline_environment() -> None:
    """Nothing in the test suite may reach the network or wait for it."""
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def run_recrl(run_dir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the real entry point in a subprocess with its run folder at ``run_dir``."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "recrl.run", f"hydra.run.dir={run_dir}", *overrides],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_recrl_in_process(run_dir: Path, *overrides: str) -> str | None:
    """Runs ``recrl.run.main`` in this process on a config composed like the CLI's.

    For the many bad-input cases: the same code path as ``python -m recrl.run`` after Hydra has
    parsed the command line, without paying a Python start-up and the imports (~15 s) per
    case. Returns the ``SystemExit`` message of a run that ends with one, else None.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import recrl.run

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
    HydraConfig.instance().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        recrl.run.main.__wrapped__(cfg)  # the function under @hydra.main
    except SystemExit as exit_:
        return str(exit_.code)
    return None


def masked_observation(module, num_users: int) -> TensorDictBase:
    """A reset observation of ``module``'s environment whose mask allows only items 7 and 9."""
    td = module.make_env(num_users, seed=0).reset()
    mask = torch.zeros_like(td["action_mask"])
    mask[:, [7, 9]] = True
    td["action_mask"] = mask
    return td
