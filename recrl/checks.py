"""Checks of a composed config before anything is built: each refusal is one line that names
the setting and the fix (`ConfigurationError`)."""

from __future__ import annotations

from typing import Any

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from recrl.data import Sequences
from recrl.data.formats import READERS


class ConfigurationError(Exception):
    """A configuration that cannot run; its message names the setting and the fix."""


def is_ddp_strategy(strategy: Any) -> bool:
    """``trainer.strategy`` runs one process per device with DDP ("ddp", "ddp_spawn", ... or a
    ``DDPStrategy`` config, as in hardware=ddp / ddp_cpu)."""
    if isinstance(strategy, str):
        return strategy.startswith("ddp")
    target = strategy.get("_target_", "") if isinstance(strategy, (DictConfig, dict)) else ""
    return str(target).endswith("DDPStrategy")


def check_hardware(trainer_cfg: DictConfig) -> None:
    """Fails early, with the fix, when the trainer asks for devices this machine does not have."""
    accelerator = str(trainer_cfg.get("accelerator", "cpu"))
    devices = trainer_cfg.get("devices", 1)
    num_nodes = trainer_cfg.get("num_nodes", 1)
    if not isinstance(num_nodes, int) or num_nodes < 1:
        raise ConfigurationError(f"trainer.num_nodes={num_nodes!r}: give a number of machines >= 1")
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count()
        wanted = available if devices in (-1, "-1", "auto") else devices
        if not isinstance(wanted, int):
            raise ConfigurationError(
                f"trainer.devices={devices!r}: give a number of GPUs (or -1 for all of them)"
            )
        if available == 0:
            asked = "all visible GPUs" if devices in (-1, "-1", "auto") else f"{wanted} GPU(s)"
            raise ConfigurationError(
                f"trainer.accelerator={accelerator} asks for {asked} but this machine has "
                "none visible to PyTorch; use hardware=auto (the default: CPU processes here)"
            )
        if wanted > available:
            raise ConfigurationError(
                f"trainer.devices={wanted} asks for more GPUs than this machine has ({available}); "
                f"use trainer.devices={available} or fewer"
            )
    elif accelerator == "cpu":
        processes = 1 if devices == "auto" else devices
        if isinstance(processes, str) and processes.isdigit():
            processes = int(processes)
        if not isinstance(processes, int) or processes < 1:
            raise ConfigurationError(
                f"trainer.devices={devices!r} with accelerator=cpu: give a number of processes >= 1"
            )
        if (processes > 1 or num_nodes > 1) and not is_ddp_strategy(trainer_cfg.get("strategy")):
            raise ConfigurationError(
                f"trainer.devices={devices} trainer.num_nodes={num_nodes} with accelerator=cpu "
                f"needs DDP; use hardware=auto (the default) or hardware=ddp_cpu with "
                f"trainer.devices={processes}"
            )
    elif accelerator != "auto":
        raise ConfigurationError(
            f"trainer.accelerator={accelerator!r} is not supported; use hardware=auto, cpu, "
            "gpu, ddp or ddp_cpu"
        )


def check_config(cfg: DictConfig) -> None:
    """Checks values that the components would only reject deep inside training."""
    if cfg.trainer.max_steps is None or cfg.trainer.max_steps < 1:
        raise ConfigurationError(
            f"trainer.max_steps={cfg.trainer.max_steps}: training length is counted in optimiser "
            "steps; give a positive number"
        )
    for key in ("num_users", "final_num_users", "every_n_steps", "max_steps"):
        if cfg.evaluation[key] < 1:
            raise ConfigurationError(f"evaluation.{key} must be >= 1, got {cfg.evaluation[key]}")
    if cfg.evaluation.select not in ("last", "best"):
        raise ConfigurationError(
            f"evaluation.select={cfg.evaluation.select!r}: choose last (the final weights) or "
            "best (the weights with the highest validation return; pretraining: HR@10)"
        )
    if cfg.evaluation.val_seed == cfg.evaluation.seed:
        raise ConfigurationError(
            f"evaluation.val_seed equals evaluation.seed ({cfg.evaluation.seed}): validation "
            "(periodic evaluation, weight selection, sweep objectives) would see the test users; "
            "give them different seeds"
        )
    if cfg.trainer.get("gradient_clip_val") is not None:
        # The modules clip in configure_gradient_clipping: a trainer value would be ignored.
        raise ConfigurationError(
            f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val}: gradient clipping is the "
            "algorithm's; set algo.max_grad_norm instead"
        )
    check_data(cfg)
    check_hardware(cfg.trainer)


def check_data(cfg: DictConfig) -> None:
    """The data group feeds the logged-data envs only: refuse it beside another env (it would be
    ignored silently), refuse a log setting given under ``env.data`` instead of the data group
    (the run would record a ``data.*`` it did not read), and name the values env=logged still
    needs before anything is read."""
    data = cfg.get("data")
    if data is None:
        return
    if "data" not in cfg.env:  # e.g. env=synthetic data=ml100k: the log would be ignored
        raise ConfigurationError(
            "a data config was chosen, but the data group is read by the logged-data envs "
            "only; choose env=ml100k, env=beauty or env=logged, or drop the data override"
        )
    # conf/env/logged.yaml passes the data node on whole (env.data: ${data}); a value set under
    # env.data would be the env's alone while the run records data.*.
    env_data = OmegaConf.to_container(cfg.env, resolve=False)["data"]
    if env_data != "${data}":
        changed = [f"env.data.{key}" for key in (env_data if isinstance(env_data, dict) else {})]
        raise ConfigurationError(
            f"{', '.join(changed) or 'env.data'} was set, but the log and its preprocessing are "
            "the data group's (conf/data/): set data.<key> instead of env.data.<key>"
        )
    missing = [f"data.{key}" for key in ("path", "format") if OmegaConf.is_missing(data, key)]
    if missing:
        raise ConfigurationError(
            f"{' and '.join(missing)} not set: a logged-data env needs the interaction log to "
            "replay, e.g. env=logged "
            f"data.path=my_log.csv data.format=table (formats: {', '.join(READERS)}; "
            "conf/data/logged.yaml), or a prepared env such as env=ml100k"
        )


def configuration_message(err: Exception) -> str:
    """One line for a rejected value. Hydra wraps an error raised inside a constructor it
    instantiates as ``Error in call to target '...':\nValueError('...')``; the constructor's
    own message names the setting and the fix, so that is the line."""
    if isinstance(err, InstantiationException) and isinstance(
            err.__cause__, (ValueError, TypeError, FileNotFoundError)):
        err = err.__cause__
    return " ".join(str(err).split())


def check_ranking(sequences: Sequences | None, ranking: DictConfig) -> None:
    """Sampled-negative rankings draw ``evaluation.ranking.num_negatives`` items each user has
    not seen: on a small catalogue that can be impossible, which would only surface after
    training. Refused here, before it, with the number that fits (the items no user lacks)."""
    if sequences is None or not ranking.num_negatives:
        return
    users = torch.repeat_interleave(torch.arange(sequences.num_users), sequences.lengths)
    pairs = torch.unique(users * (sequences.num_items + 1) + sequences.items)
    distinct = torch.bincount(pairs // (sequences.num_items + 1), minlength=sequences.num_users)
    fewest = sequences.num_items - int(distinct.max())  # unseen items of the busiest user
    if fewest < ranking.num_negatives:
        raise ConfigurationError(
            f"evaluation.ranking.num_negatives={ranking.num_negatives}, but a user of this log "
            f"has only {fewest} items they have not interacted with: set "
            f"evaluation.ranking.num_negatives={max(fewest, 1)} or fewer"
        )


#: What a module recommends per step: "item" (one item), "slate" (an ordered list, env.slate_size
#: > 1) or "both".
SLATE_SUPPORT = ("item", "slate", "both")


def check_slate_support(support: str, slate_size: int, algo: str) -> None:
    """One clear error where an algorithm meets an env of the wrong kind (`SLATE_SUPPORT`)."""
    if support == "item" and slate_size > 1:
        raise ValueError(
            f"algo={algo} recommends one item per step, but env.slate_size={slate_size}: use a "
            f"slate algorithm (algo=slateq, or algo=ppo, list-wise) or env.slate_size=1"
        )
    if support == "slate" and slate_size == 1:
        raise ValueError(
            f"algo={algo} recommends slates, but env.slate_size=1: set env.slate_size to the "
            f"items per slate (e.g. env.slate_size=2), or use a one-item algorithm (algo=dqn)"
        )
