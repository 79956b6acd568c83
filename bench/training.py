"""The cost of the framework: recrl's training loop against a minimal hand-written one.

For each algorithm the same DQN / PPO (one composed Hydra config: simulator, encoder, batch sizes,
updates per rollout; the same seed, so the same initial weights) is trained two ways in one
process:

* ``recrl``: what ``python -m recrl.run`` builds (``recrl.build.build``: the Lightning ``Trainer``
  with its callbacks, the CSV logger, the progress bar (drawn into /dev/null), checkpointing at the
  CLI's rate) and ``trainer.fit`` over the module's collector stream (``RolloutStream``). Only the
  periodic evaluation callback is removed: it is evaluation, not training (the cost of one
  evaluation and of one checkpoint is printed separately).
* ``minimal``: a plain loop in the style of TorchRL's sota-implementations scripts over a second
  module built the same way, doing that module's own work: ``Collector(env,
  module.collection_policy)``, then the module's ``rollout_to_batches`` (replay buffer / GAE),
  ``training_step`` (the loss), ``configure_gradient_clipping`` and ``optimizer_step`` (AdamW,
  DQN's target-network update) with the module's ``adamw``. No Lightning, no logging, no
  callbacks: the difference between the two sides is what the framework adds to the same work.

By default the two run in *lockstep*: after every recrl optimiser step the minimal loop makes one
step, and each side's clock is paused while the other runs. A shared, noisy machine then slows
both alike, so their ratio holds even when the absolute rates do not (``--mode sequential`` runs
them one after the other instead, alternating which goes first).

Only optimiser steps after a warm-up are timed (DQN: after ``learning_starts`` frames have filled
the replay buffer, on both sides), over whole rollouts. Prints one table: frames/s and optimiser
updates/s (medians over ``--repeats``), recrl's rate over the minimal loop's (the median of the
repeats' ratios), and where the time of one update goes, in ms per update:

    collect    the collector's rollouts (policy forward passes + simulator)
    batch      replay buffer extend / sample, MultiStep (DQN); GAE, shuffling (PPO);
               recrl's per-rollout book-keeping (click counts, frame counter)
    update     forward + backward + gradient clipping + AdamW (+ DQN's target update),
               with Lightning's closure around them on the recrl side
    logging    self.log, the logger's writes, the progress bar
    callbacks  recrl's other training callbacks (non-finite guard, checkpoint / run control)
    other      the rest: Lightning's training loop, hooks and data fetching; the loop itself

    python bench/training.py [--algos dqn ppo] [--steps N] [--repeats 3] [--threads N]
                             [--clock wall|cpu] [--override encoder=bert_small ...]
    python bench/training.py --profile dqn     # cProfile of one recrl fit instead
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import logging
import math
import os
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig
from torchrl.collectors import Collector

from recrl.callbacks import PeriodicEvaluation, StepProgressBar
from recrl.evaluation import evaluate_policy
from recrl.build import build, build_module

REPO = Path(__file__).resolve().parents[1]

#: Timed optimiser steps per measurement, and warm-up steps before them (after DQN's
#: learning_starts), per algorithm; both are rounded up to whole rollouts.
DEFAULT_STEPS = {"dqn": 120, "ppo": 64}
DEFAULT_WARMUP = {"dqn": 8, "ppo": 32}

PHASES = ("collect", "batch", "update", "logging", "callbacks", "other")

#: Callback hooks that run during training steps (timed as "callbacks", the bar as "logging").
CALLBACK_HOOKS = (
    "on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
    "on_before_optimizer_step", "on_before_zero_grad",
)


# -- configuration and building -------------------------------------------------------------
def compose_config(algo: str, output_dir: Path, steps: int, overrides: list[str]) -> DictConfig:
    """The config ``python -m recrl.run algo=<algo> <overrides>`` would run, for ``steps`` steps."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[
            f"algo={algo}", *overrides,
            f"trainer.max_steps={steps}",
            f"paths.output_dir={output_dir}",  # no Hydra run here to resolve ${hydra:...}
        ])


def build_minimal_module(cfg: DictConfig) -> Any:
    """The algorithm module exactly as ``build`` makes it (the minimal side's model)."""
    return build_module(cfg)[0]


def steps_per_rollout(cfg: DictConfig) -> int:
    algo = cfg.algo
    if "updates_per_batch" in algo:
        return algo.updates_per_batch
    return algo.ppo_epochs * (algo.frames_per_batch // algo.minibatch_size)


def whole_rollouts(steps: int, per_rollout: int) -> int:
    return max(1, -(-steps // per_rollout)) * per_rollout


# -- timing ---------------------------------------------------------------------------------
class Clock:
    """Seconds per phase, and snapshots of them at the timed window's two ends.

    Timed regions nest (``self.log`` runs inside the optimiser step, a callback's
    ``on_before_optimizer_step`` too): each phase gets its *exclusive* time, the time of regions
    nested in it goes to theirs. Whatever no region covers is ``other``. While the clock is
    paused (the other side is running, in lockstep mode) no time counts at all.
    """

    def __init__(self, start_step: int, end_step: int, now: Callable[[], float]) -> None:
        self.start_step, self.end_step = start_step, end_step
        self.now = now  # time.perf_counter (wall) or time.process_time (this process's CPU)
        self.seconds: dict[str, float] = defaultdict(float)
        self.marks: dict[int, tuple[float, int, dict[str, float]]] = {}
        self._open: list[list] = []  # [phase, start, time of nested regions]
        self._paused_at: float | None = None

    def enter(self, phase: str) -> None:
        self._open.append([phase, self.now(), 0.0])

    def leave(self) -> None:
        phase, start, nested = self._open.pop()
        elapsed = self.now() - start
        self.seconds[phase] += elapsed - nested
        if self._open:
            self._open[-1][2] += elapsed

    def pause(self) -> None:
        assert not self._open, "pause only between timed regions"
        self._paused_at = self.now()

    def resume(self) -> None:
        if self._paused_at is not None:
            self.seconds["paused"] += self.now() - self._paused_at
            self._paused_at = None

    def timed(self, phase: str, fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(*args, **kwargs):
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
        return wrapper

    def timed_iter(self, phase: str, iterator: Iterator) -> Iterator:
        """Times every ``next`` of ``iterator`` (the generator's own work, not its consumer's)."""
        iterator = iter(iterator)
        while True:
            self.enter(phase)
            try:
                item = next(iterator)
            except StopIteration:
                return
            finally:
                self.leave()
            yield item

    def tick(self, step: int, frames: int) -> None:
        """Called after optimiser step ``step`` (1-based) with the frames collected so far."""
        if step in (self.start_step, self.end_step):
            self.marks[step] = (self.now(), frames, dict(self.seconds))

    def result(self, updates: int) -> dict[str, float]:
        (t0, f0, s0), (t1, f1, s1) = self.marks[self.start_step], self.marks[self.end_step]
        spent = {k: s1.get(k, 0.0) - s0.get(k, 0.0) for k in s1}
        wall = t1 - t0 - spent.get("paused", 0.0)
        phases = {k: spent.get(k, 0.0) for k in PHASES if k != "other"}
        phases["other"] = wall - sum(phases.values())
        return {
            "frames_per_s": (f1 - f0) / wall,
            "updates_per_s": updates / wall,
            "wall_s": wall,
            **{k: 1000 * v / updates for k, v in phases.items()},  # ms per update
        }


class TimedCollector:
    """A collector whose rollouts are timed as ``collect``; everything else passes through."""

    def __init__(self, collector: Collector, clock: Clock) -> None:
        self._collector, self._clock = collector, clock

    def __iter__(self) -> Iterator:
        return self._clock.timed_iter("collect", self._collector)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)


class StepMarks(L.Callback):
    """Marks the timed window's ends at the end of optimiser steps (recrl side)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self.clock.tick(trainer.global_step, int(pl_module.frames))


class Lockstep(L.Callback):
    """After each recrl step, one step of the minimal loop, with recrl's clock paused."""

    def __init__(self, recrl_clock: Clock, minimal_clock: Clock, steps: Iterator[None]) -> None:
        self.recrl_clock, self.minimal_clock, self.steps = recrl_clock, minimal_clock, steps

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self.recrl_clock.pause()
        self.minimal_clock.resume()
        next(self.steps)
        self.minimal_clock.pause()
        self.recrl_clock.resume()


# -- the recrl side -------------------------------------------------------------------------
def make_recrl_trainer(cfg: DictConfig, output_dir: Path, clock: Clock | None,
                       progress_bar: bool) -> tuple[Any, L.Trainer]:
    """``build``'s module and Trainer, without periodic evaluation, instrumented."""
    built = build(cfg, output_dir)
    module, trainer = built.module, built.trainer
    callbacks = [c for c in trainer.callbacks if not isinstance(c, PeriodicEvaluation)]
    if not progress_bar:
        callbacks = [c for c in callbacks if not isinstance(c, StepProgressBar)]
    trainer.callbacks = callbacks
    if clock is None:
        return module, trainer
    # Wrapped on the instances, the library files unchanged.
    make_collector = module._make_collector
    module._make_collector = lambda: TimedCollector(make_collector(), clock)
    # recrl's per-rollout book-keeping (click counts, frames) around the algorithm's batching.
    count_and_batch = module._count_and_batch
    module._count_and_batch = lambda rollout: clock.timed_iter("batch", count_and_batch(rollout))
    rollout_to_batches = module.rollout_to_batches
    module.rollout_to_batches = lambda rollout: clock.timed_iter("batch", rollout_to_batches(rollout))
    # Lightning's optimizer_step runs the closure: training_step, backward, clipping, AdamW;
    # DQN's target update runs in it (or in on_train_batch_end, in older versions).
    module.optimizer_step = clock.timed("update", module.optimizer_step)
    module.on_train_batch_end = clock.timed("update", module.on_train_batch_end)
    module.log = clock.timed("logging", module.log)
    for logger in trainer.loggers:
        logger.log_metrics = clock.timed("logging", logger.log_metrics)
        logger.save = clock.timed("logging", logger.save)
    for callback in trainer.callbacks:
        phase = "logging" if isinstance(callback, ProgressBar) else "callbacks"
        for hook in CALLBACK_HOOKS:
            if getattr(type(callback), hook) is not getattr(L.Callback, hook):
                setattr(callback, hook, clock.timed(phase, getattr(callback, hook)))
    trainer.callbacks.append(StepMarks(clock))
    return module, trainer


@contextlib.contextmanager
def quiet_fit() -> Iterator[None]:
    """The progress bar is drawn (its cost counts) into /dev/null, not between the table's lines."""
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):
        yield


# -- the minimal side -----------------------------------------------------------------------
def make_optimizer(module: Any, total_steps: int) -> tuple[torch.optim.Optimizer, Any]:
    """The module's own AdamW (``adamw``), and the linear decay to 0 over ``total_steps`` that
    ``adamw`` schedules with ``anneal_lr`` (there over ``trainer.max_steps``, the same number)."""
    hp = module.hparams
    optimizer = module.adamw(hp.lr, hp.weight_decay, anneal_lr=False)["optimizer"]
    schedule = (torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: max(0.0, 1.0 - s / max(1, total_steps))) if hp.anneal_lr else None)
    return optimizer, schedule


def minimal_loop(module: Any, clock: Clock, total_steps: int) -> Iterator[None]:
    """The module's own algorithm in a plain loop, as TorchRL's sota-implementations scripts
    run theirs; yields after each optimiser step.

    The work is the module's: ``rollout_to_batches`` (DQN: replay buffer, n-step targets,
    epsilon; PPO: GAE, epochs of shuffled minibatches), ``training_step`` (the loss),
    ``configure_gradient_clipping`` and ``optimizer_step`` (AdamW; DQN's target-network and
    priority updates), in the order Lightning's automatic optimisation calls them. What is left
    out is Lightning: its loop, the closure's bookkeeping, the loggers, the callbacks, the
    rollout stream and recrl's per-rollout counters (``_count_and_batch``). ``self.log`` does
    nothing here (no logging on this side), and ``self.optimizers()`` is this loop's optimiser.
    """
    optimizer, schedule = make_optimizer(module, total_steps)
    module.log = lambda *args, **kwargs: None
    module.optimizers = lambda *args, **kwargs: optimizer
    collector = module._make_collector()  # the collector the module's rollout stream runs
    step = frames = 0
    try:
        for rollout in clock.timed_iter("collect", collector):
            frames += rollout.numel()
            for batch in clock.timed_iter("batch", module.rollout_to_batches(rollout)):
                def closure(batch: Any = batch, batch_idx: int = step) -> torch.Tensor:
                    loss = module.training_step(batch, batch_idx)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    module.configure_gradient_clipping(optimizer)
                    return loss

                clock.enter("update")
                try:
                    module.optimizer_step(0, step, optimizer, closure)
                    if schedule is not None:
                        schedule.step()
                finally:
                    clock.leave()
                step += 1
                clock.tick(step, frames)
                yield
                if step == total_steps:
                    return
    finally:
        collector.shutdown()


# -- one measurement ------------------------------------------------------------------------
def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    return pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)


def measure(cfg: DictConfig, warmup: int, steps: int, progress_bar: bool,
            now: Callable[[], float], order: tuple[str, ...],
            with_side_costs: bool = False) -> dict[str, Any]:
    """One measurement of both sides. ``order``: ("lockstep",) or the two ways in turn.
    ``with_side_costs``: then also time one checkpoint and one periodic evaluation of the
    trained recrl module (``side_costs``)."""
    total = warmup + steps
    # Lightning fetches one batch ahead, so a rollout is collected during the step before that of
    # its first batch: recrl's window starts and ends one step earlier, so that the two windows
    # hold the same rollouts (PPO's 64-step rollouts differ in cost: users leave and are reset).
    recrl_clock, minimal_clock = Clock(warmup - 1, total - 1, now), Clock(warmup, total, now)
    with tempfile.TemporaryDirectory(prefix="recrl-bench-") as tmp:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        module, trainer = make_recrl_trainer(cfg, Path(tmp), recrl_clock, progress_bar)
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        minimal = build_minimal_module(cfg)
        minimal.train()
        if not same_weights(module, minimal):
            print("warning: the two sides start from different weights (has recrl.build.build "
                  "changed? update build_minimal_module)", file=sys.stderr)
        minimal_steps = minimal_loop(minimal, minimal_clock, total)
        fit_s = {}
        for way in order:
            start = time.perf_counter()
            if way == "lockstep":
                minimal_clock.pause()
                trainer.callbacks.append(Lockstep(recrl_clock, minimal_clock, minimal_steps))
            if way in ("lockstep", "recrl"):
                with quiet_fit():
                    trainer.fit(module)
                assert trainer.global_step == total, trainer.global_step
            else:
                for _ in minimal_steps:
                    pass
            fit_s[way] = time.perf_counter() - start
        minimal_steps.close()
        costs = side_costs(cfg, module, trainer, Path(tmp), now) if with_side_costs else {}
    return {"recrl": recrl_clock.result(steps), "minimal": minimal_clock.result(steps),
            "run_s": sum(fit_s.values()), **costs}


# -- costs outside the timed window ----------------------------------------------------------
def side_costs(cfg: DictConfig, module: Any, trainer: L.Trainer, tmp: Path,
               now: Callable[[], float]) -> dict[str, float]:
    """Seconds of one checkpoint and of one periodic evaluation (as the CLI runs them, at
    ``checkpoint.every_n_steps`` and ``evaluation.every_n_steps``) of a trained module."""
    start = now()
    trainer.save_checkpoint(tmp / "probe.ckpt")
    checkpoint_s = now() - start
    env = module.make_env(cfg.evaluation.num_users, seed=cfg.evaluation.val_seed, split="validation")
    start = now()
    evaluate_policy(env, module.greedy_policy, max_steps=cfg.evaluation.max_steps)
    return {"checkpoint_s": checkpoint_s, "evaluation_s": now() - start}


# -- profile --------------------------------------------------------------------------------
def profile_recrl(cfg: DictConfig, progress_bar: bool, top: int) -> None:
    """cProfile of one recrl fit (warm-up included), the functions with most own time."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    with tempfile.TemporaryDirectory(prefix="recrl-bench-") as tmp:
        module, trainer = make_recrl_trainer(cfg, Path(tmp), None, progress_bar)
        profiler = cProfile.Profile()
        with quiet_fit():
            profiler.enable()
            trainer.fit(module)
            profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


# -- main -----------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", choices=["dqn", "ppo"], default=["dqn", "ppo"])
    parser.add_argument("--steps", type=int, default=None,
                        help="timed optimiser steps per measurement (default: dqn "
                             f"{DEFAULT_STEPS['dqn']}, ppo {DEFAULT_STEPS['ppo']}); whole rollouts")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps first, after DQN's learning_starts (default: dqn "
                             f"{DEFAULT_WARMUP['dqn']}, ppo {DEFAULT_WARMUP['ppo']})")
    parser.add_argument("--repeats", type=int, default=3,
                        help="measurements of each side; medians reported")
    parser.add_argument("--mode", choices=["lockstep", "sequential"], default="lockstep",
                        help="lockstep: the two sides alternate step by step in one run; "
                             "sequential: one run after the other, alternating which goes first")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared 2-core machine; "
                             "0 keeps torch's own choice, as the CLI runs)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="time rates and phases in wall time, or in this process's CPU time "
                             "(less sensitive to other jobs on a shared machine; use --threads 1)")
    parser.add_argument("--progress-bar", choices=["on", "off"], default="on",
                        help="recrl's progress bar (on, as the CLI runs; drawn into /dev/null)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra Hydra overrides for both sides, e.g. encoder=bert_small")
    parser.add_argument("--no-side-costs", action="store_true",
                        help="skip timing one periodic evaluation and one checkpoint")
    parser.add_argument("--profile", choices=["dqn", "ppo"], default=None,
                        help="instead: cProfile one recrl fit of this algorithm, print the top")
    parser.add_argument("--top", type=int, default=30, help="rows of the --profile listing")
    return parser.parse_args()


def quiet() -> None:
    """Start-up chatter (GPU available, storage initialised, ...) would interleave with the table."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchrl"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(LeafSpec|num_workers|does not have many).*")
    warnings.filterwarnings("ignore", category=UserWarning, module=r"lightning.*")


def fmt_rate(rate: float) -> str:
    return f"{rate / 1e3:.2f}k" if rate >= 1e4 else f"{rate:.1f}"


def fmt_updates(rate: float) -> str:
    """Four significant digits: on a loaded machine a run does under one update a second, where
    two decimals would put a few percent of rounding into the table's ratios."""
    decimals = max(0, 3 - math.floor(math.log10(rate))) if rate > 0 else 2
    return f"{rate:.{decimals}f}"


def plan(algo: str, args: argparse.Namespace) -> tuple[DictConfig, int, int]:
    """The composed config, warm-up steps and timed steps of one algorithm."""
    out = Path(tempfile.gettempdir())
    per_rollout = steps_per_rollout(compose_config(algo, out, 1, args.override))
    steps = whole_rollouts(args.steps or DEFAULT_STEPS[algo], per_rollout)
    # At least 2: recrl's window starts one step before the warm-up's end (see ``measure``).
    warmup = whole_rollouts(max(2, args.warmup if args.warmup is not None else DEFAULT_WARMUP[algo]),
                            per_rollout)
    return compose_config(algo, out, warmup + steps, args.override), warmup, steps


def main() -> None:
    args = parse_args()
    quiet()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    progress_bar = args.progress_bar == "on"
    if args.profile:
        cfg, _, _ = plan(args.profile, args)
        profile_recrl(cfg, progress_bar, args.top)
        return
    now = time.perf_counter if args.clock == "wall" else time.process_time
    plans = {algo: plan(algo, args) for algo in args.algos}

    started = time.perf_counter()
    print(f"bench/training.py: torch threads {torch.get_num_threads()}, mode {args.mode}, "
          f"clock {args.clock}, progress bar {args.progress_bar}, repeats {args.repeats}, "
          f"overrides: {' '.join(args.override) or 'none'}", flush=True)
    results: dict[str, list[dict]] = defaultdict(list)
    for repeat in range(args.repeats):
        for algo, (cfg, warmup, steps) in plans.items():
            if args.mode == "lockstep":
                order: tuple[str, ...] = ("lockstep",)
            else:  # alternate which side goes first, so a slow patch hits both alike
                order = ("recrl", "minimal") if repeat % 2 == 0 else ("minimal", "recrl")
            last = repeat == args.repeats - 1
            r = measure(cfg, warmup, steps, progress_bar, now, order,
                        with_side_costs=last and not args.no_side_costs)
            results[algo].append(r)
            print(f"  [{repeat + 1}/{args.repeats}] {algo}: updates/s recrl "
                  f"{fmt_updates(r['recrl']['updates_per_s'])}, "
                  f"minimal {fmt_updates(r['minimal']['updates_per_s'])}"
                  f", ratio {r['recrl']['updates_per_s'] / r['minimal']['updates_per_s']:.3f} "
                  f"({r['run_s']:.0f} s)", file=sys.stderr, flush=True)

    print()
    print("| algo | way | frames/s | updates/s | recrl/minimal | "
          + " | ".join(f"{p} ms" for p in PHASES) + " |")
    print("|" + "---|" * (5 + len(PHASES)))
    notes = []
    for algo, (cfg, warmup, steps) in plans.items():
        runs = results[algo]
        ratios = [r["recrl"]["updates_per_s"] / r["minimal"]["updates_per_s"] for r in runs]
        for way in ("recrl", "minimal"):
            m = {k: statistics.median(r[way][k] for r in runs) for k in runs[0][way]}
            ratio = f"{statistics.median(ratios):.3f}" if way == "recrl" else ""
            print(f"| {algo} | {way} | {fmt_rate(m['frames_per_s'])} | "
                  f"{fmt_updates(m['updates_per_s'])} | {ratio} | "
                  + " | ".join(f"{m[p]:.2f}" for p in PHASES) + " |")
        note = (f"{algo}: {steps} timed steps after {warmup} warm-up steps; recrl/minimal per "
                f"repeat {', '.join(f'{x:.3f}' for x in ratios)}; recrl overhead "
                f"{100 * (1 / statistics.median(ratios) - 1):+.1f}% time per update")
        if "evaluation_s" in runs[-1]:
            # What the CLI adds on top, per optimiser step, at its rates.
            per_step = 1 / statistics.median(r["recrl"]["updates_per_s"] for r in runs)
            evaluation = runs[-1]["evaluation_s"] / cfg.evaluation.every_n_steps
            checkpoint = runs[-1]["checkpoint_s"] / cfg.checkpoint.every_n_steps
            note += (f"; outside the window: one periodic evaluation ({cfg.evaluation.num_users} "
                     f"users) {runs[-1]['evaluation_s']:.1f} s every "
                     f"{cfg.evaluation.every_n_steps} steps (+{100 * evaluation / per_step:.0f}%),"
                     f" one checkpoint {1000 * runs[-1]['checkpoint_s']:.0f} ms every "
                     f"{cfg.checkpoint.every_n_steps} steps (+{100 * checkpoint / per_step:.2f}%)")
        notes.append(note)
    print()
    print("\n".join(notes))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
