"""``python -m recrl.run``: train a recommendation policy, evaluate it against baselines.

Reads as the run does: compose the config (Hydra) -> check it and build the environment factory,
encoder, algorithm module and trainer (`recrl.build`) -> train with Lightning -> the module's final
results (`recrl.results`: the greedy policy beside the baselines on held-out users, rankings on
logged data; pretraining: rankings only) -> write ``results.json`` and print its tables.

``ckpt_path=last`` (with ``hydra.run.dir=<the run folder>``) or ``ckpt_path=<file>`` resumes a run
exactly where its checkpoint left it (docs/resuming.md). A run that stops early (a signal, a NaN)
leaves a ``FAILED`` file that says why and no ``results.json``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from recrl.build import build
from recrl.checkpoint_io import (
    CheckpointError, check_compatible, merge_csv_metrics, read_checkpoint, resolve_ckpt_path,
    set_aside_csv_metrics,
)
from recrl.checks import ConfigurationError
from recrl.machine import describe_machine
from recrl.results import FinishedRun, optimized_metric, results_tables, write_json_atomically
from recrl.run_control import NonFiniteError, RunInterrupted
from recrl.run_folder import (
    EVALUATION_PLOT, FAILURE_FILE, LAST_CHECKPOINT, RESULTS_FILE, TEST_RETURNS_FILE,
    checkpoint_path,
)
from recrl.torchrl_state import TorchRLInternalsError
from recrl.tracking import log_final_results

# Warnings that are expected by design and would only teach users to ignore warnings:
# the run folder exists before the CSV logger writes into it (Hydra made it), and the rollout
# stream runs in the training process on purpose (it needs the live policy weights).
warnings.filterwarnings("ignore", message=r".*Experiment logs directory .* exists and is not empty")
warnings.filterwarnings("ignore", message=r".*does not have many workers")
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
# A resumed run writes its checkpoints into the folder that holds the ones it resumes from.
warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty")

#: Overrides that only tests give (conf/callbacks/default.yaml): never part of a resume command.
TEST_ONLY_OVERRIDES = ("callbacks.run_control.pause_at_step=",
                       "callbacks.non_finite_guard.inject_nan_at_step=")


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
                 if not o.startswith(("ckpt_path=", *TEST_ONLY_OVERRIDES))]
    words = ["python", "-m", "recrl.run", *overrides, f"hydra.run.dir={output_dir}", "ckpt_path=last"]
    return " ".join(shlex.quote(word) for word in words)


def train(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """One complete run; returns what ``results.json`` holds (empty on all but DDP rank 0)."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module, trainer, validation, sequences = build(cfg, output_dir)
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
        trainer.save_checkpoint(checkpoint_path(output_dir, LAST_CHECKPOINT), weights_only=False)
    choices = HydraConfig.get().runtime.choices
    title = f"{choices.get('algo')} on {choices.get('env')}"
    final = module.final_results(FinishedRun(cfg, trainer, validation, sequences, output_dir, title))
    if final is None:  # not DDP rank 0
        return {}
    results = final.results
    results["optimizer_steps"] = trainer.global_step
    results["wall_time_s"] = round(time.perf_counter() - started, 1)
    # Of it, the periodic evaluations on validation users (their cadence is the knob).
    results["validation_time_s"] = round(validation.seconds, 1)
    results["seed"] = cfg.seed
    # The strategy's device, not the module's: Lightning moves the module back to the CPU after
    # fit, so module.device would call every GPU run a CPU run.
    results["machine"] = describe_machine(
        trainer.strategy.root_device.type, processes=trainer.world_size,
        backend=getattr(trainer.strategy, "process_group_backend", None))
    if resume is not None:
        results["resumed_from"] = str(resume.path)
        if module.resumed_with_fresh_users:
            results["resumed_with_fresh_users"] = module.resumed_with_fresh_users
    # A resumed run completes the folder of the run that failed or was interrupted.
    (output_dir / FAILURE_FILE).unlink(missing_ok=True)
    for name, content in final.side_files.items():  # written with results.json, never without it
        write_json_atomically(output_dir / name, content)
    write_json_atomically(output_dir / RESULTS_FILE, results)
    log_final_results(trainer.loggers, results, output_dir / EVALUATION_PLOT)
    for table in results_tables(results):
        print("\n" + table)
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
    except TorchRLInternalsError as err:  # an unsupported TorchRL met at the first checkpoint
        (output_dir / FAILURE_FILE).write_text(f"unsupported torchrl: {err}\n")
        stop_with_one_line(f"recrl: {err}")
    except BaseException as err:
        (output_dir / FAILURE_FILE).write_text(f"run failed: {err!r}\n")
        raise
    # Sweepers (Optuna) maximise what the task returns: the algorithm names it (a validation
    # number, never a test one: the search must not see the test users).
    if not results:
        return None
    return optimized_metric(results, cfg.algo.optimized_metric)


if __name__ == "__main__":
    main()
