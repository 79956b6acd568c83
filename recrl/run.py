"""``python -m recrl.run``: train a recommendation policy, evaluate it against baselines.

Reads as the run does: compose the config (Hydra) -> check it -> build the environment factory,
encoder and algorithm module -> train with Lightning -> evaluate the greedy policy and the
baselines on held-out users (and, on logged data, rank every user's leave-one-out test item)
-> write ``results.json``, the evaluation plot and print a table. ``algo=pretrain`` trains the
encoder self-supervised instead and reports only the rankings.

``ckpt_path=last`` (with ``hydra.run.dir=<the run folder>``) or ``ckpt_path=<file>`` resumes a run
exactly where its checkpoint left it (docs/resuming.md). A run that stops early (a signal, a NaN)
leaves a ``FAILED`` file that says why and no ``results.json``.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from lightning_modules.pretrain import SequencePretrainModule
from recrl.baselines import MostPopularRecommender, MyopicOracle, RandomRecommender
from recrl.callbacks import PeriodicEvaluation, RankingValidation, StepProgressBar
from recrl.checkpoint_io import (
    BEST_CHECKPOINT, LAST_CHECKPOINT, LAST_GOOD_CHECKPOINT, AtomicCheckpointIO, CheckpointError,
    check_compatible, merge_csv_metrics, read_checkpoint, resolve_ckpt_path, set_aside_csv_metrics,
)
from recrl.compare import TEST_RETURNS_FILE
from recrl.data import Sequences
from recrl.data.formats import READERS
from recrl.encoders.text import TEXT_OPTIONS, encoder_item_features
from recrl.evaluation import Episodes, paired_gap, play_users, summarise
from recrl.machine import describe_machine
from recrl.plotting import plot_evaluation_curve
from recrl.ranking import (
    describe_protocol, evaluate_ranking, log_popularity, most_popular_scorer,
)
from recrl.run_control import NonFiniteError, NonFiniteGuard, RunControl, RunInterrupted
from recrl.tracking import log_final_results, make_loggers, tracking_callbacks


# Warnings that are expected by design and would only teach users to ignore warnings:
# the run folder exists before the CSV logger writes into it (Hydra made it), and the rollout
# stream runs in the training process on purpose (it needs the live policy weights).
warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*does not have many workers")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# A resumed run writes its checkpoints into the folder that holds the ones it resumes from.
warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")

RESULTS_FILE = "results.json"
FAILURE_FILE = "FAILED"


def log_file_suffix() -> str:
    """``""`` for the first process, ``".rank<r>"`` for every other one (``run.rank1.log``).

    Every process of a DDP run enters the same run folder (Lightning's launcher re-runs the
    command, torchrun and SLURM start it once per process); one ``run.log`` written by all would
    interleave their lines. The rank comes from the launcher's environment: torchrun's ``RANK``,
    SLURM's ``SLURM_PROCID``, or Lightning's ``NODE_RANK``/``LOCAL_RANK``.
    """
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID")
    if rank is None:
        local_rank = os.environ.get("LOCAL_RANK")
        if local_rank is None:
            return ""
        node_rank = os.environ.get("NODE_RANK", "0")
        rank = local_rank if node_rank == "0" else f"{node_rank}-{local_rank}"
    return "" if rank == "0" else f".rank{rank}"


# conf/hydra/default.yaml names the log file with it; registered before Hydra configures logging.
OmegaConf.register_new_resolver("recrl_log_suffix", log_file_suffix, replace=True)


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
                "none visible to PyTorch; use hardware=cpu (or hardware=ddp_cpu for several "
                "CPU processes)"
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
                f"needs DDP; use hardware=ddp_cpu trainer.devices={processes}"
            )
    elif accelerator != "auto":
        raise ConfigurationError(
            f"trainer.accelerator={accelerator!r} is not supported; use hardware=cpu, gpu, ddp "
            "or ddp_cpu"
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
    ignored silently), refuse a log setting given to the env instead of the data group (the run
    would record a ``data.*`` it did not read), and name the values env=logged still needs before
    anything is read."""
    data = cfg.get("data")
    if data is None:
        return
    if "path" not in cfg.env:  # e.g. env=synthetic data=ml100k: the log would be ignored
        raise ConfigurationError(
            "a data config was chosen, but the data group is read by the logged-data envs "
            "only; choose env=ml100k, env=beauty or env=logged, or drop the data override"
        )
    # conf/env/logged.yaml passes each data.<key> on as env.<key>: ${data.<key>}.
    env_values = OmegaConf.to_container(cfg.env, resolve=False)
    for key in data:
        if key in env_values and env_values[key] != f"${{data.{key}}}":
            raise ConfigurationError(
                f"env.{key} was set, but the log and its preprocessing are the data group's "
                f"(conf/data/): set data.{key} instead of env.{key}"
            )
    missing = [f"data.{key}" for key in ("path", "format") if OmegaConf.is_missing(data, key)]
    if missing:
        raise ConfigurationError(
            f"{' and '.join(missing)} not set: a logged-data env needs the interaction log to "
            "replay, e.g. env=logged "
            f"data.path=my_log.csv data.format=table (formats: {', '.join(READERS)}; "
            "conf/data/logged.yaml), or a prepared env such as env=ml100k"
        )


class Built(NamedTuple):
    """What a run is made of."""

    module: Any  # a RecommenderModule (RL) or a SequencePretrainModule
    trainer: L.Trainer
    evaluation: PeriodicEvaluation | RankingValidation
    sequences: Sequences | None  # the log behind a logged-data env, else None


def is_pretraining(module: Any) -> bool:
    """Self-supervised pretraining has no policy to run in the simulator, only rankings."""
    return isinstance(module, SequencePretrainModule)


def with_default_env(overrides: Sequence[str], default_env: str = "ml100k") -> list[str]:
    """``overrides`` with ``env=<default_env>`` in front unless one of them chooses the env.

    For scripts whose runs are on logged data (bench/): ``--override encoder=bert_text`` alone
    must not fall back to the synthetic env, and Hydra refuses a group given twice."""
    chooses_env = any(o.lstrip("+~").split("=", 1)[0] == "env" for o in overrides)
    return list(overrides) if chooses_env else [f"env={default_env}", *overrides]


def build_module(cfg: DictConfig) -> tuple[Any, Any]:
    """The algorithm module of ``cfg`` (env factory -> encoder -> algo), and the one-user env
    built on the way (it rejects invalid env values at once)."""
    env_factory = instantiate(cfg.env, _partial_=True)
    probe_env = env_factory(num_users=1, seed=cfg.seed)
    # The text_* keys (encoder=bert_text) choose the item features, not the encoder's shape.
    encoder_cfg = OmegaConf.to_container(cfg.encoder, resolve=True)
    text_options = {k: encoder_cfg.pop(k) for k in TEXT_OPTIONS if k in encoder_cfg}
    encoder = instantiate(
        encoder_cfg,
        num_items=probe_env.num_items,
        history_length=probe_env.history_length,
        item_features=encoder_item_features(probe_env, **text_options),
    )
    module = instantiate(cfg.algo, encoder=encoder, env_factory=env_factory, seed=cfg.seed)
    return module, probe_env


def build(cfg: DictConfig, output_dir: Path) -> Built:
    """Instantiates everything from the config; any rejected value becomes a ConfigurationError."""
    try:
        check_config(cfg)
        module, probe_env = build_module(cfg)
        sequences = getattr(probe_env, "sequences", None)  # logged-data envs only
        if is_pretraining(module):
            evaluation = RankingValidation(
                sequences,
                every_n_steps=cfg.evaluation.every_n_steps,
                num_users=cfg.evaluation.num_users,
                seed=cfg.evaluation.val_seed,
                heldout_only=module.train_on_validation_item,
                keep_best=cfg.evaluation.select == "best",
            )
        else:
            evaluation = PeriodicEvaluation(
                every_n_steps=cfg.evaluation.every_n_steps,
                num_users=cfg.evaluation.num_users,
                seed=cfg.evaluation.val_seed,
                max_steps=cfg.evaluation.max_steps,
                keep_best=cfg.evaluation.select == "best",
            )
        checkpoints = output_dir / "checkpoints"
        checkpoint = ModelCheckpoint(
            dirpath=checkpoints,
            every_n_train_steps=cfg.checkpoint.every_n_steps,
            save_last=True,
            save_top_k=0,
        )
        testing = cfg.get("testing") or {}
        # Stops on SIGTERM / SIGINT with a checkpoint; stops on a NaN / inf before it is applied.
        run_control = RunControl(checkpoints / LAST_CHECKPOINT,
                                 pause_at_step=testing.get("pause_at_step"), run_dir=output_dir)
        guard = NonFiniteGuard(checkpoints / LAST_GOOD_CHECKPOINT,
                               inject_nan_at_step=testing.get("inject_nan_at_step"))
        loggers = make_loggers(cfg)
        # The step bar replaces Lightning's epoch bar (the rollout stream has no epochs); with
        # trainer.enable_progress_bar=false (logs, sweeps) there is none.
        progress = [StepProgressBar()] if cfg.trainer.get("enable_progress_bar", True) else []
        callbacks = [*progress, evaluation, guard, checkpoint, run_control,
                     *tracking_callbacks(cfg, loggers)]
        # Every checkpoint is written beside its target and renamed over it (never half-written).
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                              plugins=[AtomicCheckpointIO()])
    except (ValueError, TypeError, FileNotFoundError, InstantiationException) as err:
        raise ConfigurationError(configuration_message(err)) from err
    return Built(module, trainer, evaluation, sequences)


def configuration_message(err: Exception) -> str:
    """One line for a rejected value. Hydra wraps an error raised inside a constructor it
    instantiates as ``Error in call to target '...':\nValueError('...')``; the constructor's
    own message names the setting and the fix, so that is the line."""
    if isinstance(err, InstantiationException) and isinstance(
            err.__cause__, (ValueError, TypeError, FileNotFoundError)):
        err = err.__cause__
    return " ".join(str(err).split())


def select_weights(module: Any, evaluation: PeriodicEvaluation, select: str) -> dict[str, Any]:
    """Loads the weights ``evaluation.select`` asks for into ``module`` and says which they are:
    ``last`` keeps the final weights, ``best`` loads those with the highest validation return
    (the validation users are not the test users, so the test numbers stay unbiased), and the
    click counts of that step, which ``popular`` ranks: the same frames as the agent's."""
    if select == "best" and evaluation.best is not None:
        point, weights = evaluation.best["point"], evaluation.best["weights"]
        with torch.no_grad():
            for name, tensor in module.policy_weights().items():
                tensor.copy_(weights[name])
            if "item_clicks" in evaluation.best:  # not in checkpoints written before it was kept
                module.item_clicks.copy_(evaluation.best["item_clicks"])
    else:
        point = evaluation.curve[-1]
    return {"rule": select, "step": int(point["step"]), "frames": int(point["frames"]),
            "val_return": point["return_mean"], "val_return_ci95": point["return_ci95"]}


def select_pretrained_weights(module: Any, evaluation: RankingValidation, select: str
                              ) -> dict[str, float]:
    """Loads the pretrained weights ``evaluation.select`` asks for into ``module`` and returns
    their validation point: ``last`` keeps the final weights, ``best`` loads those with the
    highest HR@10 on the validation items (never the test items the final rankings measure)."""
    if select == "best" and evaluation.best is not None:
        module.load_state_dict(evaluation.best["weights"])
        return evaluation.best["point"]
    return evaluation.curve[-1]


def final_evaluation(module: Any, cfg: DictConfig, sequences: Sequences | None,
                     evaluation: PeriodicEvaluation
                     ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The greedy agent and every baseline on the same held-out test users: their summaries, and
    every user's return under each (for ``test_returns.json``).

    The agent runs with the weights ``evaluation.select`` chooses; when that is ``best``, the
    final weights are evaluated too (``agent_last``), so the effect of the choice is on record.
    ``popular`` ranks items by the clicks they got during training up to the selected weights'
    step (any simulator); on logged data ``popular_log`` ranks them by the training users'
    interactions in the log, the usual most-popular of recommender-systems papers.

    Every baseline also records ``agent_gap_mean`` / ``agent_gap_ci95``: the agent's return minus
    the baseline's, user by user (`paired_gap`; both played the same users), the test of "the
    agent beats this baseline" that the two separate return intervals are too wide for.
    """
    num_users, seed = cfg.evaluation.final_num_users, cfg.evaluation.seed

    def play(policy_for_env) -> tuple[Episodes, dict[str, Any]]:
        # Under DDP process 0 plays the users and sends the episodes on (call on every process).
        episodes = play_users(
            lambda n, s: module.make_env(n, seed=s, split="heldout"), policy_for_env,
            num_users=num_users, seed=seed, max_steps=cfg.evaluation.max_steps,
        )
        return episodes, summarise(episodes)

    module.eval()
    results: dict[str, Any] = {}
    returns: dict[str, list[float]] = {}
    if cfg.evaluation.select == "best":
        last_episodes, results["agent_last"] = play(lambda env: module.greedy_policy)
        returns["agent_last"] = last_episodes.returns.tolist()
    selected = select_weights(module, evaluation, cfg.evaluation.select)
    agent_episodes, agent = play(lambda env: module.greedy_policy)
    returns["agent"] = agent_episodes.returns.tolist()
    played = {
        "random": play(lambda env: RandomRecommender(seed=seed)),
        "popular": play(lambda env: MostPopularRecommender(module.item_clicks)),
    }
    if sequences is not None:
        counts = log_popularity(sequences, users=~sequences.heldout_users)
        played["popular_log"] = play(lambda env: MostPopularRecommender(counts))
    if module.make_env(1, seed=seed, split="heldout").has_expected_reward:  # only simulators with hidden state
        played["oracle_myopic"] = play(MyopicOracle)
    baselines = {}
    for name, (episodes, summary) in played.items():
        gap_mean, gap_ci95 = paired_gap(agent_episodes.returns, episodes.returns)
        baselines[name] = {**summary, "agent_gap_mean": gap_mean, "agent_gap_ci95": gap_ci95}
        returns[name] = episodes.returns.tolist()
    results = {"agent": agent, **results, "selected_weights": selected, "baselines": baselines}
    return results, returns


def evaluation_population(cfg: DictConfig) -> dict[str, Any]:
    """What decides which test users a run's final evaluation meets: two runs with equal
    populations played the same users in the same order (`recrl.compare` checks it), whatever
    number of processes each ran on (`recrl.evaluation.play_users`)."""
    env = OmegaConf.to_container(cfg.env, resolve=True)
    env.pop("cache_dir", None)  # where preprocessed data is cached changes no user
    return {"env": env,
            "seed": cfg.evaluation.seed, "num_users": cfg.evaluation.final_num_users}


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table of the agent next to the baselines; ``agent - this`` is the paired
    per-user gap of the agent's return over each baseline's."""
    rows = [("agent", results["agent"])]
    if "agent_last" in results:
        rows.append(("agent (last)", results["agent_last"]))
    rows += results["baselines"].items()
    lines = [
        f"{'policy':<14}{'return':>18}{'clicks':>16}{'CTR':>8}{'length':>16}{'coverage':>10}"
        f"{'agent - this':>18}",
    ]
    for name, m in rows:
        lines.append(
            f"{name:<14}"
            f"{m['return_mean']:>10.1f} ± {m['return_ci95']:<5.1f}"
            f"{m['clicks_mean']:>8.1f} ± {m['clicks_ci95']:<5.1f}"
            f"{m['ctr']:>8.3f}"
            f"{m['episode_length']:>8.1f} ± {m['episode_length_ci95']:<5.1f}"
            f"{m['coverage']:>10.3f}"
            + (f"{m['agent_gap_mean']:>+10.1f} ± {m['agent_gap_ci95']:<5.1f}"
               if "agent_gap_mean" in m else "")
        )
    return "\n".join(lines)


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """A reader never sees a half-written file: write beside it, then rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def offline_ranking(module: Any, sequences: Sequences, cfg: DictConfig) -> dict[str, Any]:
    """HR@K / NDCG@K of the trained model and of most-popular on the leave-one-out test items."""
    options = cfg.evaluation.ranking
    users = torch.arange(sequences.num_users)
    described = f"all {sequences.num_users} users"
    if options.max_users is not None and options.max_users < sequences.num_users:
        generator = torch.Generator().manual_seed(options.seed)
        users = torch.randperm(sequences.num_users, generator=generator)[: options.max_users]
        users = users.sort().values
        described = f"{options.max_users} of {sequences.num_users} users (seed {options.seed})"

    def rank(score_fn) -> dict[str, dict[str, float]]:
        return evaluate_ranking(
            score_fn, sequences, history_length=module.encoder.history_length, users=users,
            ks=tuple(options.ks), num_negatives=options.num_negatives, seed=options.seed,
            chunk_size=options.chunk_size, device=module.device,
        )

    module.eval()
    scores = {"agent": rank(module.item_scores), "popular": rank(most_popular_scorer(sequences))}
    protocols = {key: describe_protocol(key) for key in scores["agent"]}
    return {**scores, "protocols": protocols, "users": f"{described}, leave-one-out test item"}


def format_ranking_table(ranking: dict[str, Any]) -> str:
    """One row per model, HR@K and NDCG@K under each protocol."""
    protocols = list(ranking["protocols"])
    metrics = list(ranking["agent"][protocols[0]])
    header = f"{'ranking':<10}" + "".join(f"{p[:24]:>{12 * len(metrics)}}" for p in protocols)
    lines = [header, f"{'':<10}" + "".join(f"{m:>12}" for _ in protocols for m in metrics)]
    for name in ("agent", "popular"):
        lines.append(f"{name:<10}" + "".join(
            f"{ranking[name][p][m]:>12.4f}" for p in protocols for m in metrics
        ))
    return "\n".join(lines)


def pin_sweep_folder_for_ddp_processes() -> None:
    """In a multirun, Lightning's ``ddp`` re-runs our command line (with ``-m``) for every extra
    process, which would resolve ``${now:...}`` again and start a second sweep folder. The
    re-run gets this sweep's folder on its command line, so all processes share one."""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or os.environ.get("LOCAL_RANK", "0") != "0":
        return
    pinned = f'hydra.sweep.dir="{hydra_cfg.sweep.dir}"'
    if not any(arg.startswith("hydra.sweep.dir=") for arg in sys.argv):
        sys.argv.append(pinned)


class Resume(NamedTuple):
    """The checkpoint a run resumes from."""

    path: Path
    step: int  # optimiser steps it holds


def checkpoint_to_resume(cfg: DictConfig, output_dir: Path, module: Any) -> Resume | None:
    """The file ``ckpt_path`` names, once it is known to load (``weights_only``) and to fit
    this run's model; None without ``ckpt_path``."""
    try:
        path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
        if path is None:
            return None
        checkpoint = read_checkpoint(path)
        check_compatible(checkpoint, module, path)
    except CheckpointError as err:
        raise ConfigurationError(str(err)) from err
    return Resume(path, int(checkpoint.get("global_step", 0)))


def resume_command(output_dir: Path) -> str:
    """The command line that resumes this run from its last checkpoint (test-only switches
    left out)."""
    overrides = [o for o in HydraConfig.get().overrides.task
                 if not o.startswith(("ckpt_path=", "testing.", "+testing."))]
    words = ["python", "-m", "recrl.run", *overrides, f"hydra.run.dir={output_dir}", "ckpt_path=last"]
    return " ".join(shlex.quote(word) for word in words)


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """One complete run; returns what ``results.json`` holds."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, trainer, evaluation, sequences = build(cfg, output_dir)
    resume = checkpoint_to_resume(cfg, output_dir, module)
    started = time.perf_counter()
    pin_sweep_folder_for_ddp_processes()
    if trainer.is_global_zero:
        # Results of an earlier run in this folder no longer describe it.
        (output_dir / RESULTS_FILE).unlink(missing_ok=True)
        (output_dir / TEST_RETURNS_FILE).unlink(missing_ok=True)
    moved_metrics = (set_aside_csv_metrics(trainer.loggers)
                     if resume is not None and trainer.is_global_zero else [])
    try:
        # weights_only: a checkpoint holds tensors and plain containers only, never code.
        trainer.fit(module, ckpt_path=None if resume is None else resume.path, weights_only=True)
    finally:
        if moved_metrics:
            merge_csv_metrics(moved_metrics, resume.step)
    every = cfg.checkpoint.every_n_steps
    if not every or trainer.global_step % every:
        # ModelCheckpoint writes at multiples of every_n_steps only: the final state always ends
        # up in last.ckpt too (what encoder.init_from and ckpt_path=last read). Every rank
        # computes the same answer (a collective save: all ranks take part). The full state,
        # optimiser and callbacks included, so that ckpt_path=last resumes from it.
        trainer.save_checkpoint(output_dir / "checkpoints" / LAST_CHECKPOINT, weights_only=False)
    choices = HydraConfig.get().runtime.choices
    test_returns: dict[str, Any] | None = None
    if is_pretraining(module):
        validation = select_pretrained_weights(module, evaluation, cfg.evaluation.select)
        checkpoint = output_dir / "checkpoints" / LAST_CHECKPOINT
        if cfg.evaluation.select == "best":
            # The selected weights in a file of their own for encoder.init_from; last.ckpt stays
            # the final state that ckpt_path=last resumes. A collective save, as above.
            checkpoint = output_dir / "checkpoints" / BEST_CHECKPOINT
            trainer.save_checkpoint(checkpoint, weights_only=True)
        if not trainer.is_global_zero:
            return {}
        results = {"offline_ranking": offline_ranking(module, sequences, cfg),
                   "selected_weights": {"rule": cfg.evaluation.select,
                                        "step": int(validation["step"])},
                   "validation": validation,
                   "checkpoint": str(checkpoint)}
    else:
        # Every process takes part (rank 0 plays the test users); rank 0 writes the results.
        results, returns = final_evaluation(module, cfg, sequences, evaluation)
        if not trainer.is_global_zero:
            return {}
        test_returns = {"population": evaluation_population(cfg),
                        "returns": returns}
        results["frames"] = int(module.frames)
        results["evaluation_protocol"] = (
            f"online, simulator, {cfg.evaluation.final_num_users} held-out test users "
            f"(seed {cfg.evaluation.seed}), one episode each, greedy policy with the "
            f"{cfg.evaluation.select} weights by the return of {cfg.evaluation.num_users} "
            f"validation users (seed {cfg.evaluation.val_seed}); ± is a 95% CI over users"
        )
        if sequences is not None:
            results["offline_ranking"] = offline_ranking(module, sequences, cfg)
        plot_evaluation_curve(
            evaluation.curve, results["baselines"], output_dir / "evaluation_return.png",
            title=f"{choices.get('algo')} on {choices.get('env')}",
        )
    results["optimizer_steps"] = trainer.global_step
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    results["seed"] = cfg.seed
    # The strategy's device, not the module's: Lightning moves the module back to the CPU after
    # fit, so module.device would call every GPU run a CPU run.
    results["machine"] = describe_machine(trainer.strategy.root_device.type)
    if resume is not None:
        results["resumed_from"] = str(resume.path)
        if getattr(module, "resumed_with_fresh_users", None):
            results["resumed_with_fresh_users"] = module.resumed_with_fresh_users
    # A resumed run completes the folder of the run that failed or was interrupted.
    (output_dir / FAILURE_FILE).unlink(missing_ok=True)
    if test_returns is not None:  # written with results.json, never without it
        write_json_atomically(output_dir / TEST_RETURNS_FILE, test_returns)
    write_json_atomically(output_dir / RESULTS_FILE, results)
    log_final_results(trainer.loggers, results, output_dir / "evaluation_return.png")
    if "agent" in results:
        print("\n" + format_results_table(results))
    if "offline_ranking" in results:
        print("\n" + format_ranking_table(results["offline_ranking"]))
    print(f"\nrun folder: {output_dir}")
    return results


def stop_with_one_line(message: str) -> None:
    """Ends the run with ``message`` and no traceback (it names the problem and the fix).

    Call inside an ``except``. In a multirun the exception goes on instead: Hydra marks this job
    failed and runs the sweep's other jobs (Optuna records a failed trial); SystemExit would end
    the whole sweep here.
    """
    if HydraConfig.get().mode == RunMode.MULTIRUN:
        print(message, file=sys.stderr)
        raise
    raise SystemExit(message) from None


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        results = train(cfg, output_dir)
    except ConfigurationError as err:
        (output_dir / FAILURE_FILE).write_text(f"configuration error: {err}\n")
        stop_with_one_line(f"recrl: configuration error: {err}")
    except RunInterrupted as err:
        command = resume_command(output_dir)
        (output_dir / FAILURE_FILE).write_text(f"interrupted: {err}\nresume with: {command}\n")
        print(f"recrl: {err}; resume with: {command}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except NonFiniteError as err:
        (output_dir / FAILURE_FILE).write_text(f"non-finite: {err}\n")
        stop_with_one_line(f"recrl: training stopped: {err}")
    except BaseException as err:
        (output_dir / FAILURE_FILE).write_text(f"run failed: {err!r}\n")
        raise
    # Sweepers (Optuna) maximise what the task returns: a validation number, never a test one
    # (the search must not see the test users): the validation return of the selected weights
    # of an RL run, the validation items' full-ranking HR@10 at the end of pretraining.
    if not results:
        return None
    if "agent" in results:
        return results["selected_weights"]["val_return"]
    return results["validation"]["HR@10"]


if __name__ == "__main__":
    main()
