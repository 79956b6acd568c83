"""Experiment tracking with Weights & Biases (``logger=wandb``) and the Optuna study's storage.

A run's loggers come from ``cfg.logger`` (``make_loggers``); the W&B one also gets the whole
composed config and the run's identity from Hydra: the command-line overrides name and tag the
run, and the jobs of one multirun share a group named after the sweep folder, each job its own
run. ``log_final_results`` adds ``results.json`` (flattened into summary metrics) and the
evaluation plot, then closes the run so that the next job of a multirun does not log into it.

Mode: ``offline`` in the config or ``WANDB_MODE`` decide; otherwise a run with no W&B
credentials (no ``WANDB_API_KEY``, no ``~/.netrc`` entry, no ``wandb login``) logs offline after
one warning, rather than failing or waiting at a login prompt.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

from recrl.callbacks import EveryNSteps
from recrl.evaluation import ITEM_METRICS, SLATE_METRICS
from recrl.sweeps import LOCAL_MODES, override_key, sweep_group

#: The ``_target_`` of conf/logger/wandb.yaml: built here, with the run's config and identity.
WANDB_TARGET = f"{__name__}.wandb_logger"
#: W&B rejects longer tags.
MAX_TAG_LENGTH = 64

_warned_offline = False  # one warning per process, not one per multirun job


def make_loggers(cfg: DictConfig) -> list[Logger]:
    """The Lightning loggers of ``cfg.logger`` (one entry per chosen logger: csv, wandb, ...)."""
    loggers: list[Logger] = []
    for options in cfg.get("logger", {}).values():
        if options.get("_target_") != WANDB_TARGET:
            loggers.append(instantiate(options))
            continue
        kwargs = OmegaConf.to_container(options, resolve=True)
        kwargs.pop("_target_")
        kwargs.pop("example_users", None)  # for `tracking_callbacks`
        kwargs.pop("example_warmup_steps", None)
        loggers.append(wandb_logger(**kwargs, run_config=run_config(cfg)))
    return loggers


def tracking_callbacks(cfg: DictConfig, loggers: list[Logger]) -> list[L.Callback]:
    """What a W&B logger needs from inside training: frames as the x-axis, example tables."""
    callbacks: list[L.Callback] = []
    for options, logger in zip(cfg.get("logger", {}).values(), loggers):
        if isinstance(logger, WandbLogger):
            callbacks.append(WandbTracking(
                logger,
                every_n_steps=cfg.evaluation.every_n_steps,
                seed=cfg.evaluation.val_seed,
                example_users=options.get("example_users", 0),
                warmup_steps=options.get("example_warmup_steps", 0),
            ))
    return callbacks


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The composed config as W&B stores it, with the overrides that made this run."""
    config = OmegaConf.to_container(cfg, resolve=True)
    overrides = task_overrides()
    config["overrides"] = overrides
    # What a sweep varies apart from the seed: W&B groups repeats of one setup by it.
    varied = [o for o in overrides if override_key(o) != "seed"]
    config["configuration"] = ",".join(varied) or "default"
    return config


def task_overrides() -> list[str]:
    """The command-line overrides of this run or multirun job (``algo=ppo``, ``seed=1``)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def wandb_mode(offline: bool) -> str | None:
    """``"offline"``, or None to let W&B decide (online, or whatever WANDB_MODE says)."""
    global _warned_offline
    if offline:
        return "offline"
    if os.environ.get("WANDB_MODE", "").lower() in LOCAL_MODES:
        return None
    import wandb

    # Reads WANDB_API_KEY, the settings files and ~/.netrc; no prompt, no network.
    if wandb.login(prompt=False, verify=False):
        return None
    if not _warned_offline:
        _warned_offline = True
        print(
            "recrl: warning: logger=wandb without a W&B login (wandb login, or WANDB_API_KEY): "
            "logging offline; upload later with `wandb sync`, or set logger.wandb.offline=true "
            "to silence this",
            file=sys.stderr,
        )
    return "offline"


def wandb_logger(
    project: str,
    save_dir: str,
    run_config: dict[str, Any] | None = None,
    entity: str | None = None,
    offline: bool = False,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | None = None,
    log_model: bool | str = False,
) -> WandbLogger:
    """Lightning's W&B logger for this run (the W&B run itself starts at the first log)."""
    import wandb

    if wandb.run is not None:
        # A previous job of this multirun failed before `log_final_results` closed its run:
        # close it now, or Lightning would log this job into it.
        wandb.finish(exit_code=1)
    Path(save_dir).mkdir(parents=True, exist_ok=True)  # wandb warns about a missing one
    overrides = task_overrides()
    if group is None and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        group = sweep_group(HydraConfig.get().sweep.dir)
    extra: dict[str, Any] = {}
    mode = wandb_mode(offline)
    if mode is not None:
        # Not WandbLogger(offline=True): that sets WANDB_MODE for the whole process, so every
        # later job of a multirun would be offline too.
        extra["mode"] = mode
    logger = WandbLogger(
        project=project,
        entity=entity,
        save_dir=save_dir,
        name=name or (",".join(overrides) or None),
        group=group,
        tags=[*(tags or []), *(o[:MAX_TAG_LENGTH] for o in overrides)],
        config=run_config,
        log_model=log_model,
        # One W&B run per Lightning run: never resume an earlier run by id.
        resume=None,
        **extra,
    )
    # Lightning passes anonymous=None, which wandb 0.31 answers with a deprecation warning.
    logger._wandb_init.pop("anonymous", None)
    return logger


class WandbTracking(EveryNSteps):
    """Plots W&B metrics against environment frames and, at every evaluation, logs a table of
    what the greedy policy recommends to a few held-out users after their recent history.

    The users are the first ``example_users`` of the validation users (the periodic
    evaluation's seed); each first takes ``warmup_steps`` greedy steps, so the history is not empty.
    Items are shown by id, with their text (title | genres) on logged data that has it; ``*``
    marks a clicked item.
    """

    def __init__(self, logger: WandbLogger, every_n_steps: int, seed: int, example_users: int,
                 warmup_steps: int) -> None:
        super().__init__(every_n_steps, keep_best=False)  # a schedule of tables, no selection
        self.logger = logger
        self.seed = seed
        self.example_users = example_users
        self.warmup_steps = warmup_steps

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.is_global_zero and hasattr(pl_module, "frames"):  # RL modules count frames
            run = self.logger.experiment
            for prefix in ("train", "val"):
                run.define_metric(f"{prefix}/frames")
                run.define_metric(f"{prefix}/*", step_metric=f"{prefix}/frames")

    def _evaluate(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.curve.append({"step": trainer.global_step})
        if not trainer.is_global_zero or self.example_users < 1:
            return
        if not hasattr(pl_module, "greedy_policy"):  # pretraining has no policy to show
            return
        columns, rows = self.examples(pl_module)
        self.logger.log_table("examples/recommendations", columns=columns, data=rows,
                              step=trainer.global_step)

    @torch.no_grad()
    def examples(self, pl_module: Any) -> tuple[list[str], list[list[Any]]]:
        env = pl_module.make_env(self.example_users, seed=self.seed, split="validation")
        texts = getattr(env, "item_texts", None)
        policy = pl_module.greedy_policy
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = env.reset()
            for _ in range(self.warmup_steps):
                td = step_mdp(env.step(policy(td)))
            action = policy(td)["action"]  # [B]
        history, response = td["history"].cpu(), td["history_response"].cpu()  # [B, L]
        rows = []
        for user in range(self.example_users):
            shown = [(int(i), int(r)) for i, r in zip(history[user], response[user]) if i > 0]
            items = " ".join(f"{i}{'*' if r == 2 else ''}" for i, r in shown)
            item = int(action[user])
            row = [user, items, item]
            if texts is not None:
                row += [" / ".join(texts[i] for i, _ in shown[-5:]), texts[item]]
            rows.append(row)
        columns = ["user", "history (item ids, * = clicked)", "recommended item"]
        if texts is not None:
            columns += ["last 5 history items", "recommended item text"]
        return columns, rows


def flatten(results: dict[str, Any], prefix: str = "final") -> dict[str, float]:
    """``{"agent": {"return_mean": x}}`` -> ``{"final/agent/return_mean": x}``, numbers only."""
    flat: dict[str, float] = {}
    for key, value in results.items():
        name = f"{prefix}/{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


#: The W&B results table's columns: a policy's key missing from results.json (the gap for agents,
#: an item metric the env cannot provide: recrl.evaluation.ITEM_METRICS, the list metrics of a run
#: without slates: SLATE_METRICS) is None there.
RESULT_COLUMNS = ["return_mean", "return_ci95", "clicks_mean", "ctr", "episode_length",
                  *ITEM_METRICS, *SLATE_METRICS, "agent_gap_mean", "agent_gap_ci95"]


def log_final_results(loggers: list[Logger], results: dict[str, Any], plot_path: Path) -> None:
    """Adds ``results.json`` and the evaluation plot to every W&B run, then closes the run."""
    wandb_loggers = [logger for logger in loggers if isinstance(logger, WandbLogger)]
    if not wandb_loggers:
        return  # a CSV-only run never imports wandb
    import wandb

    for logger in wandb_loggers:
        run = logger.experiment
        run.summary.update(flatten(results))
        extra: dict[str, Any] = {}
        if "agent" in results:
            policies = [("agent", results["agent"])]
            if "agent_last" in results:
                policies.append(("agent (last)", results["agent_last"]))
            policies += results["baselines"].items()
            extra["final/results"] = wandb.Table(
                columns=["policy", *RESULT_COLUMNS],
                data=[[name, *(stats.get(c) for c in RESULT_COLUMNS)] for name, stats in policies],
            )
        if plot_path.is_file():
            extra["final/evaluation_return"] = wandb.Image(str(plot_path))
        if extra:
            run.log(extra)
        run.finish()


def sqlite_storage(path: str) -> str:
    """The Optuna storage URL of a SQLite file, creating its folder (Optuna opens the file
    before Hydra creates the sweep folder)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{Path(path).resolve()}"
