"""End-to-end training throughput: env frames/s and optimiser updates/s of whole training runs.

Each row of the table is one training run, built the way ``python -m recrl.run`` builds it
(``recrl.build.build`` from the composed Hydra config: the Lightning ``Trainer`` with every
callback of the CLI, the CSV logger, the progress bar (drawn into /dev/null) and the periodic
evaluation at its configured cadence, which also evaluates before the first step and after the
last), trained with ``trainer.fit`` for a fixed number of optimiser steps. Nothing is left out
of the time: start-up, DQN's replay-buffer warm-up (``algo.learning_starts``), collection,
updates and evaluation all count, as in a real run. What ``fit`` does not include (the final
test evaluation against the baselines, results.json) is not measured.

A row is (algorithm, width = ``algo.num_envs``, encoder, device):

* ``reference (2026-12-05 defaults)``: the configuration of 5 December 2026, pinned below as
  explicit overrides (``REFERENCE``), so that it stays the same row whatever conf/ says later;
* ``default``: the config as it is in conf/ when the benchmark runs;
* ``width W``: the default config with ``algo.num_envs=W`` and the same rollout length
  (``algo.frames_per_batch = W x frames_per_batch / num_envs``); batch sizes as configured, or
  scaled with the width (``--batch-scaling linear``). Every row's overrides are printed.

Rows with the same composed config run once (today the reference, the default and DQN's
width-8 row are one run). Each run is a fresh subprocess (``--row``, one JSON result on
stdout): peak memory and CUDA state belong to one row, and a row that fails (out of memory, a
refused config) is reported in the table instead of ending the benchmark.

A row trains for whole rollouts: the fewest that give ``--steps`` optimiser steps or collect
``--max-frames`` frames, whichever comes first, at least one (PPO: ``ppo_epochs x
frames_per_batch / minibatch_size`` steps per rollout; DQN: ``updates_per_batch``, after the
warm-up rollouts). Lightning fetches one batch ahead, so after the last step it has already
collected the next rollout, which no step trained on: that rollout's frames and its collection
time are left out (printed in the notes); a real run would train on it.

Columns:

    frames/s       env frames (the run's own counter, ``module.frames``) per second of wall time
    w/o eval       the same, with the periodic evaluations' time taken out
    updates/s      optimiser steps (``trainer.global_step``) per second of wall time
    collect %      the collector's rollouts (policy forward passes + simulator)
    batch %        turning rollouts into batches: replay buffer extend / sample (DQN), GAE and
                   minibatches (PPO), recrl's click and frame book-keeping
    update %       from the first ``on_train_batch_start`` to the last ``on_train_batch_end``
                   of a step: forward, backward, clipping, AdamW, target update, logging, the
                   progress bar and the other callbacks
    eval %         the periodic evaluations (``PeriodicEvaluation``; their number beside it)
    other %        the rest: Lightning's set-up and loop, fetching, checkpoint callbacks
    peak MB        CPU: the process's peak resident memory (``ru_maxrss``; imports included);
                   cuda: ``torch.cuda.max_memory_allocated()`` during fit
    x ref          frames/s over the reference row's of the same algorithm and device (and
                   the same over ``w/o eval``)

On cuda the clock synchronises the device at phase boundaries (and only there).

    python bench/throughput.py                     # cpu, bert_tiny, dqn + ppo, widths 8 64 256 1024
    python bench/throughput.py --quick             # reference + default rows, few steps (~1 min)
    python bench/throughput.py --devices cuda --encoders bert_tiny bert_small --json gpu.json
    python bench/throughput.py --algos ppo --widths 64 256 --batch-scaling linear \\
                               --override env.num_items=5000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from types import ModuleType
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from recrl.build import build
from recrl.machine import describe_machine

HERE = Path(__file__).resolve().parent


def _load_training() -> ModuleType:
    """bench/training.py (a script, not a package): its config and output helpers."""
    spec = importlib.util.spec_from_file_location("bench_training", HERE / "training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


training = _load_training()

REFERENCE_LABEL = "reference (2026-12-05 defaults)"
#: Every setting that moves training speed, as conf/ had it on 2026-12-05 (besides the env,
#: taken as configured). The reference rows run these whatever conf/ says now.
REFERENCE_COMMON = [
    "encoder=bert_tiny",
    "evaluation.every_n_steps=250", "evaluation.num_users=200", "evaluation.max_steps=2000",
    "trainer.log_every_n_steps=50", "checkpoint.every_n_steps=1000",
    "trainer.precision=32-true",
]
REFERENCE = {
    "dqn": [
        "algo.num_envs=8", "algo.frames_per_batch=256", "algo.updates_per_batch=4",
        "algo.batch_size=64", "algo.buffer_size=100000", "algo.learning_starts=2000",
        "algo.n_steps=32", "algo.prioritized=false", "algo.dueling=true",
        "algo.click_loss_weight=0.0", "algo.target_update=soft",
        *REFERENCE_COMMON,
    ],
    "ppo": [
        "algo.num_envs=32", "algo.frames_per_batch=2048", "algo.ppo_epochs=4",
        "algo.minibatch_size=256", "algo.advantages=batch",
        *REFERENCE_COMMON,
    ],
}

#: Optimiser steps a row aims at, and frames it stops at (whole rollouts, at least one).
DEFAULT_STEPS = {"dqn": 128, "ppo": 128}
DEFAULT_MAX_FRAMES = 100_000
QUICK_STEPS = {"dqn": 16, "ppo": 32}
DEFAULT_WIDTHS = {"cpu": [8, 64, 256, 1024], "cuda": [8, 64, 256, 1024, 4096]}
HARDWARE = {"cpu": "hardware=cpu", "cuda": "hardware=gpu"}

PHASES = ("collect", "batch", "update", "evaluation", "other")
#: A row's result on the subprocess's stdout starts with this.
RESULT_MARK = "THROUGHPUT_ROW "


# -- rows -----------------------------------------------------------------------------------
class Row:
    """One training run of the table: what it is, the overrides it runs with, its sizes and its
    result. (A plain class: a dataclass needs its module in ``sys.modules``, which a script
    loaded from its file, as the tests load bench/, is not.)"""

    def __init__(self, algo: str, label: str, device: str, encoder: str,
                 overrides: list[str]) -> None:
        self.algo, self.label, self.device, self.encoder = algo, label, device, encoder
        self.overrides = overrides  # the row's own, then --override, then the device's hardware
        self.labels: list[str] = [label]  # every label whose config composed the same
        self.width = self.frames_per_rollout = self.updates_per_rollout = 0
        self.rollouts = self.steps = 0
        self.threads = 1
        self.result: dict[str, Any] = {}

    def spec(self) -> dict[str, Any]:
        """What the row's process needs (``--row``)."""
        return {"algo": self.algo, "device": self.device, "steps": self.steps,
                "threads": self.threads, "overrides": self.overrides}

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def merge_overrides(*lists: list[str]) -> list[str]:
    """The overrides of all ``lists``, the later of two for the same key winning (Hydra refuses
    a key given twice), in first-seen order."""
    merged: dict[str, str] = {}
    for overrides in lists:
        for override in overrides:
            key = override.split("=", 1)[0].lstrip("+~")
            merged.pop(key, None)
            merged[key] = override
    return list(merged.values())


def compose(algo: str, overrides: list[str], steps: int = 1,
            output_dir: Path | None = None) -> DictConfig:
    return training.compose_config(algo, output_dir or Path(tempfile.gettempdir()), steps,
                                   overrides)


def width_overrides(cfg: DictConfig, algo: str, width: int, batch_scaling: str) -> list[str]:
    """``cfg`` at ``width`` users: the same rollout length; batch sizes as configured, or
    (``linear``) in proportion to the width, so that updates per rollout stay as configured."""
    rollout_length = cfg.algo.frames_per_batch // cfg.algo.num_envs
    overrides = [f"algo.num_envs={width}", f"algo.frames_per_batch={width * rollout_length}"]
    if batch_scaling == "linear":
        key = "batch_size" if algo == "dqn" else "minibatch_size"
        size = max(1, round(cfg.algo[key] * width / cfg.algo.num_envs))
        overrides.append(f"algo.{key}={size}")
    return overrides


def plan_rows(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """The rows to run (configs that compose the same merged into one) and notes on the rows
    left out."""
    notes: list[str] = []
    rows: dict[str, Row] = {}
    devices = list(args.devices)
    if "cuda" in devices and not torch.cuda.is_available():
        devices.remove("cuda")
        notes.append("cuda rows skipped: no CUDA GPU on this machine")
    for device in devices:
        hardware = [HARDWARE[device]]
        widths = args.widths if args.widths is not None else DEFAULT_WIDTHS[device]
        for algo in args.algos:
            wanted = [Row(algo, REFERENCE_LABEL, device, "bert_tiny",
                          merge_overrides(REFERENCE[algo], args.override, hardware))]
            for encoder in args.encoders:
                base = merge_overrides([f"encoder={encoder}"], args.override, hardware)
                wanted.append(Row(algo, "default", device, encoder, base))
                cfg = compose(algo, base)
                for width in widths:
                    own = width_overrides(cfg, algo, width, args.batch_scaling)
                    wanted.append(Row(algo, f"width {width}", device, encoder,
                                      merge_overrides([f"encoder={encoder}"], own,
                                                      args.override, hardware)))
            for row in wanted:
                cfg = compose(algo, row.overrides)
                key = f"{algo}\n{OmegaConf.to_yaml(cfg)}"
                if key in rows:
                    rows[key].labels.append(row.label)
                    continue
                size_row(row, cfg, args)
                rows[key] = row
    return list(rows.values()), notes


def size_row(row: Row, cfg: DictConfig, args: argparse.Namespace) -> None:
    """Width, rollout sizes and the row's length in whole rollouts (see the module docstring)."""
    row.width = cfg.algo.num_envs
    row.frames_per_rollout = cfg.algo.frames_per_batch
    row.updates_per_rollout = training.steps_per_rollout(cfg)
    by_steps = math.ceil(args.steps[row.algo] / row.updates_per_rollout)
    by_frames = math.ceil(args.max_frames / row.frames_per_rollout)
    row.rollouts = max(1, min(by_steps, by_frames))
    row.steps = row.rollouts * row.updates_per_rollout
    row.threads = args.threads


# -- one row, in its own process ------------------------------------------------------------
class PhaseTimer:
    """Seconds per phase, and what each collected rollout brought and cost.

    Regions nest (an evaluation runs inside a step's ``on_train_batch_end``): each phase gets
    its *exclusive* time, a region nested in another counts for its own phase only."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now  # time.perf_counter; with a cuda synchronize first on cuda
        self.seconds = dict.fromkeys(PHASES[:-1], 0.0)
        #: Per rollout, in collection order: [frames, collect s, batching s, batches yielded].
        self.rollouts: list[list[float]] = []
        self.evaluations = 0
        self._open: list[list] = []  # [phase, start, seconds of regions nested in it]

    def enter(self, phase: str) -> None:
        self._open.append([phase, self.now(), 0.0])

    def leave(self) -> float:
        """Closes the innermost region; returns its whole (inclusive) duration."""
        phase, start, nested = self._open.pop()
        elapsed = self.now() - start
        self.seconds[phase] += elapsed - nested
        if self._open:
            self._open[-1][2] += elapsed
        return elapsed

    def timed(self, phase: str, fn: Callable) -> Callable:
        @wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.enter(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self.leave()
        return wrapper

    def rollouts_of(self, collector: Any) -> Iterator[Any]:
        """The collector's rollouts, each ``next`` timed as ``collect`` and recorded."""
        iterator = iter(collector)
        while True:
            self.enter("collect")
            try:
                rollout = next(iterator)
            except StopIteration:
                self.leave()
                return
            self.rollouts.append([rollout.numel(), self.leave(), 0.0, 0])
            yield rollout

    def batches_of(self, batches: Iterator[Any]) -> Iterator[Any]:
        """The latest rollout's batches, each ``next`` timed as ``batch`` and recorded."""
        record = self.rollouts[-1]
        while True:
            self.enter("batch")
            try:
                batch = next(batches)
            except StopIteration:
                record[2] += self.leave()
                return
            record[2] += self.leave()
            record[3] += 1
            yield batch


class TimedCollector:
    """A collector whose rollouts go through ``PhaseTimer.rollouts_of``; the rest passes
    through (``shutdown``, the state a checkpoint reads)."""

    def __init__(self, collector: Any, timer: PhaseTimer) -> None:
        self._collector, self._timer = collector, timer

    def __iter__(self) -> Iterator[Any]:
        return self._timer.rollouts_of(self._collector)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collector, name)


class StepStart(L.Callback):
    """First callback of a step: opens its ``update`` region; notes when the first step began."""

    def __init__(self, timer: PhaseTimer) -> None:
        self.timer = timer
        self.first: tuple[float, int, float] | None = None  # (time, frames, evaluation s)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self.timer.enter("update")
        if self.first is None:
            self.first = (self.timer.now(), int(pl_module.frames),
                          self.timer.seconds["evaluation"])


class StepEnd(L.Callback):
    """Last callback of a step (before the checkpoint callbacks): closes its ``update`` region."""

    def __init__(self, timer: PhaseTimer) -> None:
        self.timer = timer

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        self.timer.leave()


def clock(device: str) -> Callable[[], float]:
    if device != "cuda":
        return time.perf_counter

    def now() -> float:
        torch.cuda.synchronize()  # at phase boundaries only: the work before it is counted
        return time.perf_counter()
    return now


def rss_mb() -> float:
    """This process's resident memory now (Linux ``/proc/self/statm``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """Trains one row as ``python -m recrl.run`` would for ``spec['steps']`` steps; returns its
    counts, seconds per phase and peak memory."""
    training.quiet()
    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    now = clock(device)
    with tempfile.TemporaryDirectory(prefix="recrl-throughput-") as tmp:
        cfg = compose(spec["algo"], spec["overrides"], spec["steps"], Path(tmp))
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        built = build(cfg, Path(tmp))
        module, trainer = built.module, built.trainer
        # Instrumented on the instances; the library files are unchanged.
        timer = PhaseTimer(now)
        make_collector = module._make_collector
        module._make_collector = lambda: TimedCollector(make_collector(), timer)
        count_and_batch = module._count_and_batch  # recrl's book-keeping + the algorithm's batching
        module._count_and_batch = lambda rollout: timer.batches_of(count_and_batch(rollout))
        built.validation._evaluate = timer.timed("evaluation", built.validation._evaluate)
        start_mark, end_mark = StepStart(timer), StepEnd(timer)
        trainer.callbacks.insert(0, start_mark)
        trainer.callbacks.append(end_mark)  # Lightning keeps the checkpoint callbacks after it

        rss_before = rss_mb()
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = now()
        with training.quiet_fit():
            trainer.fit(module, weights_only=True)
        wall = now() - started
        steps, frames = trainer.global_step, int(module.frames)
        evaluations = len(built.validation.curve)
    result = {
        "steps": steps, "frames_counted": frames, "wall_s_fit": wall,
        "evaluations": evaluations, "rollouts": len(timer.rollouts),
        **account(timer, steps, frames, wall, start_mark.first, started),
        "rss_before_fit_mb": rss_before,
        # ru_maxrss: kilobytes on Linux; the high-water mark of this process, which only ran this.
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if device == "cuda":
        result["cuda_peak_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        result["cuda_peak_reserved_mb"] = torch.cuda.max_memory_reserved() / 2**20
        result["gpu"] = torch.cuda.get_device_name()
    return result


def account(timer: PhaseTimer, steps: int, frames: int, wall: float,
            first: tuple[float, int, float] | None, started: float) -> dict[str, Any]:
    """Rates and the split of wall time, without the rollouts collected ahead of training.

    The rollouts that the first ``steps`` batches came from (warm-up rollouts that gave none
    included) are the run's; any after them were fetched ahead by Lightning and never trained
    on: their frames and their collection and batching time are left out."""
    used, given = 0, 0
    while used < len(timer.rollouts) and given < steps:
        given += timer.rollouts[used][3]
        used += 1
    ahead = timer.rollouts[used:]
    ahead_frames = int(sum(r[0] for r in ahead))
    ahead_collect, ahead_batch = sum(r[1] for r in ahead), sum(r[2] for r in ahead)
    seconds = dict(timer.seconds)
    seconds["collect"] -= ahead_collect
    seconds["batch"] -= ahead_batch
    wall_s = wall - ahead_collect - ahead_batch
    seconds["other"] = wall_s - sum(seconds.values())
    frames_used = int(sum(r[0] for r in timer.rollouts[:used]))
    training_s = wall_s - seconds["evaluation"]
    out = {
        "frames": frames_used,
        "wall_s": wall_s,
        "seconds": seconds,
        "frames_per_s": frames_used / wall_s,
        "frames_per_s_without_evaluation": frames_used / training_s,
        "updates_per_s": steps / wall_s,
        "updates_per_s_without_evaluation": steps / training_s,
        "ahead_frames": ahead_frames,
        "ahead_s": ahead_collect + ahead_batch,
        "frames_recorded": int(sum(r[0] for r in timer.rollouts)),  # == module.frames
    }
    if first is not None:
        at, first_frames, evaluation_before = first
        # Set-up and warm-up before the first update (DQN: filling learning_starts), without
        # the evaluation before training.
        out["first_update_s"] = at - started - evaluation_before
        out["first_update_frames"] = first_frames
    return out


def row_main(spec_json: str) -> None:
    """``--row``: one row in this process; its result as one JSON line on stdout."""
    spec = json.loads(spec_json)
    result = run_row(spec)
    print(RESULT_MARK + json.dumps(result), flush=True)


# -- the table ------------------------------------------------------------------------------
def run_in_subprocess(row: Row, timeout: float) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--row", json.dumps(row.spec())]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s (--row-timeout)",
                "process_s": time.perf_counter() - started}
    process_s = time.perf_counter() - started
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return {**json.loads(line[len(RESULT_MARK):]), "process_s": process_s}
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    # The exception's own line (the last one a traceback prints), or whatever came last.
    error = lines[-1].strip() if lines else f"exit status {done.returncode}, no output"
    return {"error": error, "returncode": done.returncode, "process_s": process_s,
            "stderr_tail": "\n".join(lines[-30:])}


def fmt_percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.0f}"


def fmt_mb(row: Row) -> str:
    r = row.result
    value = r.get("cuda_peak_allocated_mb", r.get("peak_rss_mb"))
    return f"{value:,.0f}" if value is not None else ""


def reference_of(rows: list[Row], row: Row) -> Row | None:
    for other in rows:
        if (other.algo, other.device) == (row.algo, row.device) and REFERENCE_LABEL in other.labels:
            return other
    return None


def table(rows: list[Row]) -> list[str]:
    header = ["algo", "row", "device", "encoder", "width", "frames / updates per rollout",
              "steps", "wall s", "frames/s", "w/o eval", "updates/s",
              *(f"{phase} %" for phase in ("collect", "batch", "update", "eval", "other")),
              "evals", "peak MB", "x ref", "x ref w/o eval"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        r = row.result
        cells = [row.algo, " = ".join(row.labels), row.device, row.encoder, f"{row.width:,}",
                 f"{row.frames_per_rollout:,} / {row.updates_per_rollout:,}"]
        if "error" in r:
            cells += [str(row.steps), f"failed: {r['error'][:120]}"] + [""] * (len(header) - 8)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        ref = reference_of(rows, row)
        ok = ref is not None and "error" not in ref.result
        cells += [
            str(r["steps"]), f"{r['wall_s']:.1f}", training.fmt_rate(r["frames_per_s"]),
            training.fmt_rate(r["frames_per_s_without_evaluation"]),
            training.fmt_updates(r["updates_per_s"]),
            *(fmt_percent(r["seconds"][phase], r["wall_s"]) for phase in PHASES),
            str(r["evaluations"]), fmt_mb(row),
            f"{r['frames_per_s'] / ref.result['frames_per_s']:.2f}" if ok else "",
            f"{r['frames_per_s_without_evaluation'] / ref.result['frames_per_s_without_evaluation']:.2f}"
            if ok else "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def row_notes(rows: list[Row]) -> list[str]:
    notes = []
    for i, row in enumerate(rows, 1):
        r = row.result
        line = f"{i}. {row.algo} {' = '.join(row.labels)} ({row.device}): {' '.join(row.overrides)}"
        if "error" not in r:
            each = r["seconds"]["evaluation"] / max(1, r["evaluations"])
            line += (f"; {r['frames']:,} frames, {r['rollouts']} rollouts collected; "
                     f"one evaluation {each:.1f} s")
            if "first_update_s" in r:
                line += (f"; first update after {r['first_update_s']:.1f} s "
                         f"({r['first_update_frames']:,} frames collected)")
            if r["ahead_frames"]:
                line += (f"; left out: {r['ahead_frames']:,} frames fetched ahead "
                         f"({r['ahead_s']:.2f} s)")
        line += f"; process {r['process_s']:.0f} s"
        notes.append(line)
    return notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", choices=["dqn", "ppo"], default=["dqn", "ppo"])
    parser.add_argument("--widths", nargs="*", type=int, default=None,
                        help="algo.num_envs of the width rows (default: cpu "
                             f"{' '.join(map(str, DEFAULT_WIDTHS['cpu']))}; cuda "
                             f"{' '.join(map(str, DEFAULT_WIDTHS['cuda']))}; none: only the "
                             "reference and default rows)")
    parser.add_argument("--encoders", nargs="+", default=["bert_tiny"],
                        help="conf/encoder/ choices of the default and width rows")
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], default=["cpu"])
    parser.add_argument("--batch-scaling", choices=["none", "linear"], default="none",
                        help="width rows: batch sizes as configured (none), or in proportion to "
                             "the width, keeping the updates per rollout (linear)")
    parser.add_argument("--steps", type=int, default=None,
                        help="optimiser steps a row aims at (default: dqn "
                             f"{DEFAULT_STEPS['dqn']}, ppo {DEFAULT_STEPS['ppo']}), in whole rollouts")
    parser.add_argument("--max-frames", type=int, default=DEFAULT_MAX_FRAMES,
                        help="a row stops at the rollout that reaches this many frames first "
                             "(at least one rollout; DQN's warm-up not counted)")
    parser.add_argument("--quick", action="store_true",
                        help="a check: reference and default rows only, few steps "
                             f"(dqn {QUICK_STEPS['dqn']}, ppo {QUICK_STEPS['ppo']})")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of each row (default 1: steadier on a shared "
                             "machine; 0 keeps torch's own choice, as the CLI runs)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra Hydra overrides for every row (the reference rows too)")
    parser.add_argument("--row-timeout", type=float, default=1800,
                        help="seconds before a row's process is stopped and reported failed")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write every row, the machine and the command here")
    parser.add_argument("--row", default=None, help=argparse.SUPPRESS)  # internal: one row
    args = parser.parse_args(argv)
    if args.quick and args.widths is None:
        args.widths = []
    default_steps = QUICK_STEPS if args.quick else DEFAULT_STEPS
    args.steps = {algo: args.steps or default_steps[algo] for algo in ("dqn", "ppo")}
    return args


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.row is not None:
        row_main(args.row)
        return []
    training.quiet()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    load_before = os.getloadavg()
    rows, skipped = plan_rows(args)
    command = " ".join(["python bench/throughput.py", *(argv if argv is not None else sys.argv[1:])])
    print(f"bench/throughput.py: {len(rows)} runs, torch threads {args.threads or 'default'}, "
          f"batch scaling {args.batch_scaling}, overrides: {' '.join(args.override) or 'none'}",
          file=sys.stderr, flush=True)
    for i, row in enumerate(rows, 1):
        row.result = run_in_subprocess(row, args.row_timeout)
        r = row.result
        outcome = (f"failed: {r['error']}" if "error" in r else
                   f"{training.fmt_rate(r['frames_per_s'])} frames/s, "
                   f"{training.fmt_updates(r['updates_per_s'])} updates/s")
        print(f"  [{i}/{len(rows)}] {row.algo} {' = '.join(row.labels)} {row.device} "
              f"{row.encoder}: {outcome} ({r['process_s']:.0f} s)", file=sys.stderr, flush=True)
    total_s = time.perf_counter() - started
    load_after = os.getloadavg()
    machine = describe_machine("cuda" if any(row.device == "cuda" for row in rows) else "cpu")
    machine["cpu_threads"] = args.threads or machine["cpu_threads"]
    machine["cpu_cores"] = os.cpu_count() or 0

    print()
    print("\n".join(table(rows)))
    print()
    print("\n".join(row_notes(rows) + skipped))
    print(f"machine: {machine['cpu']} ({machine['cpu_cores']} cores), "
          + (f"{machine['gpu']}, " if "gpu" in machine else "")
          + f"torch {machine['torch']}, {args.threads or 'default'} thread(s) per row; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"total {total_s / 60:.1f} min")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "command": command, "machine": machine, "total_s": total_s,
            "load_average": {"before": load_before, "after": load_after},
            "skipped": skipped, "rows": [row.as_dict() for row in rows],
        }, indent=2))
    return rows


if __name__ == "__main__":
    main()
