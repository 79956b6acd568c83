"""Shared test helpers: where the repository, its configs and the real data are; composing the
root config as the CLI does; running ``python -m recrl.run`` (and other CLIs) as a user would,
in a throw-away folder, or in this process; reading what a run wrote; loading a bench/ script."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from omegaconf import DictConfig
from tensordict import TensorDictBase

REPO_ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = REPO_ROOT / "conf"

# Real data for tests: ../shared/data beside the repository, or $RECRL_TEST_DATA. It is read in
# place, never copied into the repository; tests that need it skip, saying why, without it.
DATA_DIR = Path(os.environ.get("RECRL_TEST_DATA", REPO_ROOT.parent / "shared" / "data"))
ML100K = DATA_DIR / "ml-100k"
BEAUTY = DATA_DIR / "amazon-beauty" / "beauty.txt"
#: Sessions of a quarter of the default time budget: ~30 recommendations a user instead of ~120,
#: so smoke runs' evaluations are short (what they prove does not depend on session length).
SHORT_SESSIONS = "env.time_budget=50"
#: Nothing in the test suite may reach the network or wait for it: W&B logs offline, Hugging
#: Face models load from local files only.
OFFLINE = {"WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

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
    """This process too (in-process runs): offline unless the caller chose otherwise."""
    for name, value in OFFLINE.items():
        os.environ.setdefault(name, value)


@pytest.fixture(autouse=True)
def _no_hydra_config_left_behind() -> Iterator[None]:
    """A test that registers a run's ``hydra`` node (``run_recrl_in_process``,
    ``compose_config(run_dir=...)``) leaves nothing behind for the tests after it."""
    yield
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().cfg = None


def ml100k_data(cache_dir: Path) -> list[str]:
    """Overrides that point ``env=ml100k``'s data at the test data, with a throw-away cache."""
    return [f"data.path={ML100K}", f"data.cache_dir={cache_dir}"]


# -- composing the config ----------------------------------------------------------------------
def compose_config(*overrides: str, run_dir: Path | None = None,
                   job_num: int | None = None) -> DictConfig:
    """The root config with ``overrides``, composed as ``python -m recrl.run`` composes it.

    Without ``run_dir``: the task's config alone, as Hydra's ``compose`` returns it
    (``${hydra:...}`` values such as ``paths.output_dir`` cannot resolve unless overridden).
    With ``run_dir``: the ``hydra`` node too, with ``hydra.runtime.output_dir`` set to
    ``run_dir`` as Hydra sets it when it starts a run, registered as the current
    ``HydraConfig`` (``${hydra:...}`` then resolves). ``job_num``: also the job's number, as the
    launcher of a multirun sets it (``hydra.job.num`` and ``id``, read by the sweep folders).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=run_dir is not None)
    if run_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(run_dir)
            if job_num is not None:
                cfg.hydra.job.num, cfg.hydra.job.id = job_num, str(job_num)
        HydraConfig.instance().set_config(cfg)
    return cfg


# -- running the CLI -----------------------------------------------------------------------------
def subprocess_env(threads: int | None = None, **extra: str) -> dict[str, str]:
    """The environment of a process a test starts: this one's, offline, unbuffered, importing
    this checkout's packages first; ``threads``: that many torch / BLAS threads (processes
    running side by side share the machine's cores); ``extra``: more variables."""
    env = {**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.update(extra)
    return env


def recrl_command(*args: str) -> list[str]:
    """The command line ``python -m recrl.run <args>`` with this interpreter."""
    return [sys.executable, "-m", "recrl.run", *args]


def run_process(command: list[str], cwd: Path = REPO_ROOT, env: dict[str, str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """``command`` as a real process (in ``subprocess_env()`` unless ``env``), its output
    captured as text."""
    return subprocess.run(command, cwd=cwd, env=env or subprocess_env(), capture_output=True,
                          text=True, timeout=timeout)


def run_recrl(run_dir: Path, *overrides: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Runs the real entry point in a subprocess with its run folder at ``run_dir``."""
    return run_process(recrl_command(f"hydra.run.dir={run_dir}", *overrides), timeout=timeout)


def run_recrl_in_process(run_dir: Path, *overrides: str) -> str | None:
    """Runs ``recrl.run.main`` in this process on a config composed like the CLI's.

    For the many bad-input cases: the same code path as ``python -m recrl.run`` after Hydra has
    parsed the command line, without paying a Python start-up and the imports (~15 s) per
    case. Returns the ``SystemExit`` message of a run that ends with one, else None.
    """
    import recrl.run

    cfg = compose_config(*overrides, run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        recrl.run.main.__wrapped__(cfg)  # the function under @hydra.main
    except SystemExit as exit_:
        return str(exit_.code)
    return None


def read_results(run_dir: Path) -> dict[str, Any]:
    """A run's ``results.json``."""
    return json.loads((run_dir / "results.json").read_text())


# -- other helpers -------------------------------------------------------------------------------
def load_bench(name: str) -> ModuleType:
    """A script of bench/ (not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_beats_random(module, num_users: int = 300, seed: int = 123) -> None:
    """The greedy policy of a trained ``module`` beats the uniformly random one (random slates on
    a slate env) on the same ``num_users`` users, beyond both 95% intervals."""
    from recrl.baselines import RandomRecommender
    from recrl.evaluation import evaluate_policy

    module.eval()
    agent = evaluate_policy(module.make_env(num_users, seed=seed), module.greedy_policy)
    env = module.make_env(num_users, seed=seed)
    random = evaluate_policy(env, RandomRecommender(seed=0, slate_size=env.slate_size))
    assert agent["return_mean"] - agent["return_ci95"] > random["return_mean"] + random["return_ci95"]


def masked_observation(module, num_users: int) -> TensorDictBase:
    """A reset observation of ``module``'s environment whose mask allows only items 7 and 9."""
    td = module.make_env(num_users, seed=0).reset()
    mask = torch.zeros_like(td["action_mask"])
    mask[:, [7, 9]] = True
    td["action_mask"] = mask
    return td


def small_module(module_class, num_items: int = 60, history_length: int = 5,
                 env_kwargs: dict | None = None, **kwargs):
    """An algorithm module on a small synthetic simulator and a one-layer encoder, seeded: what
    the algorithms' unit and learning tests train in seconds."""
    from functools import partial

    from recrl.encoders import HistoryEncoder
    from recrl.envs import InterestEvolutionEnv

    torch.manual_seed(0)
    env_factory = partial(InterestEvolutionEnv, num_items=num_items,
                          history_length=history_length, **(env_kwargs or {}))
    encoder = HistoryEncoder(num_items, history_length, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64,
                             item_features=env_factory(num_users=1).item_features)
    return module_class(encoder, env_factory, **kwargs)
