"""``python -m recrl.report <sweep folder> [--wandb]``: one summary of a Hydra sweep.

Reads every job folder of a multirun (``<sweep>/<job>/``, or an Optuna study's trial folders):
its ``.hydra/overrides.yaml`` says which configuration it ran (the ``seed`` override only makes
a repeat), ``results.json`` its final evaluation, ``metrics.csv`` its evaluation curve. Writes

- ``report.md``: per configuration, the agent's and every baseline's return as mean ± 95% CI
  over seeds (Student t), with each seed's value; failed and unfinished jobs are listed, never
  dropped;
- ``report.png``: evaluation return against environment frames, one line per configuration
  (mean over seeds) with a band from the lowest to the highest seed.

``--wandb`` also builds a W&B Report of the sweep's runs (their group is the sweep folder, see
recrl/tracking.py) when W&B is reachable, and says in one line why not otherwise.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from recrl.stats import mean_ci95_over_seeds as mean_ci95  # noqa: E402
from recrl.sweeps import LOCAL_MODES, override_key, sweep_group  # noqa: E402,F401

REPORT_MD, REPORT_PNG = "report.md", "report.png"


@dataclass
class Job:
    """One job folder of the sweep."""

    folder: Path
    overrides: list[str]
    seed: int | None
    results: dict[str, Any] | None  # results.json; None unless the job completed
    failure: str | None  # the FAILED file's first line
    curve: list[tuple[int, float, float]] = field(default_factory=list)  # (step, frames, return)
    configuration: str = ""
    started: bool = True  # False: the sweep planned it but no folder exists

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def status(self) -> str:
        if self.results is not None:
            return "complete"
        if not self.started:
            return "never started"
        return "failed" if self.failure is not None else "unfinished (no results.json)"


def read_curve(path: Path) -> list[tuple[int, float, float]]:
    """``(step, frames, val/return)`` of every evaluation in a job's metrics.csv."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/return")]
    return [(int(float(r["step"])), float(r.get("val/frames") or r["step"]), float(r["val/return"]))
            for r in rows]


def job_number(folder: Path) -> tuple[int, str]:
    return (int(folder.name), "") if folder.name.isdigit() else (sys.maxsize, folder.name)


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job folder (one holding ``.hydra/overrides.yaml``) directly under ``sweep_dir``."""
    jobs = []
    folders = sorted((p.parent.parent for p in sweep_dir.glob("*/.hydra/overrides.yaml")),
                     key=job_number)
    for folder in folders:
        overrides = [str(o) for o in OmegaConf.load(folder / ".hydra" / "overrides.yaml")]
        config_file = folder / ".hydra" / "config.yaml"
        seed = OmegaConf.load(config_file).get("seed") if config_file.is_file() else None
        results_file, failed_file = folder / "results.json", folder / "FAILED"
        results = json.loads(results_file.read_text()) if results_file.is_file() else None
        failure = None
        if failed_file.is_file():
            failure = (failed_file.read_text().strip().splitlines() or ["(empty FAILED file)"])[0]
        curve = read_curve(folder / "metrics.csv")
        jobs.append(Job(folder, overrides, seed, results, failure, curve))
    # A job that ends the process (a configuration error exits) stops the sweep: list the jobs
    # it never reached too.
    seen = [sorted(job.overrides) for job in jobs]
    for number, overrides in enumerate(planned_jobs(sweep_dir) or []):
        if sorted(overrides) not in seen:
            seed = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "seed"), None)
            jobs.append(Job(sweep_dir / str(number), overrides, seed, None, None, started=False))
    return jobs


def planned_jobs(sweep_dir: Path) -> list[list[str]] | None:
    """The overrides of every job a grid sweep (Hydra's basic sweeper) launches, from its
    multirun.yaml; None for other sweepers (Optuna decides its trials as it goes)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    hydra_cfg = OmegaConf.load(path).hydra
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides([*params, *hydra_cfg.overrides.task])
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def label_configurations(jobs: list[Job]) -> list[str]:
    """Sets each job's configuration: the overrides that vary across the sweep, apart from the
    seed. Returns the overrides every job shares."""
    without_seed = [[o for o in job.overrides if override_key(o) != "seed"] for job in jobs]
    common = [o for o in (without_seed[0] if jobs else []) if all(o in w for w in without_seed)]
    for job, overrides in zip(jobs, without_seed):
        varying = [o for o in overrides if o not in common]
        job.configuration = ", ".join(varying) or ", ".join(common) or "default"
    return common


def by_configuration(jobs: list[Job]) -> dict[str, list[Job]]:
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        groups.setdefault(job.configuration, []).append(job)
    return groups


def fmt(mean: float, ci: float, digits: int = 1) -> str:
    if math.isnan(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


#: recrl.evaluation.ITEM_METRICS, keys and column headers (not imported from there: the
#: report reads JSON and needs no torch; tests/test_diversity.py checks the two agree).
ITEM_METRICS = {"coverage": "coverage", "exposure_gini": "exposure Gini", "ild": "ILD",
                "novelty": "novelty", "mcd": "MCD"}


def item_metric_cell(stats: list[dict[str, Any]], key: str) -> str:
    """An item metric over seeds (3 decimals), or "—" unless every seed has a number for it."""
    values = [s.get(key) for s in stats]
    if any(v is None or math.isnan(v) for v in values):
        return "—"
    return fmt(*mean_ci95(values), digits=3)


def policies_of(jobs: list[Job]) -> list[str]:
    """agent, then every baseline any complete job evaluated, in first-seen order."""
    names = ["agent"]
    for job in jobs:
        for name in (job.results or {}).get("baselines", {}):
            if name not in names:
                names.append(name)
    return names


def stats_of(job: Job, policy: str) -> dict[str, float] | None:
    """The final evaluation of ``policy`` ("agent" or a baseline) in ``job``, if it has one."""
    results = job.results or {}
    if policy == "agent":
        return results.get("agent")
    return results.get("baselines", {}).get(policy)


def returns(jobs: list[Job], policy: str) -> list[tuple[Job, float]]:
    """(job, mean return) of ``policy`` in every complete job that evaluated it."""
    return [(job, stats_of(job, policy)["return_mean"]) for job in jobs if stats_of(job, policy)]


def markdown_report(sweep_dir: Path, jobs: list[Job], common: list[str]) -> str:
    """The whole report.md."""
    complete = [j for j in jobs if j.status == "complete"]
    groups = by_configuration(jobs)
    policies = policies_of(complete)
    lines = [f"# Sweep report: `{sweep_dir}`", ""]
    lines.append(f"{len(jobs)} jobs: {len(complete)} complete, "
                 f"{sum(j.status == 'failed' for j in jobs)} failed, "
                 f"{sum(j.status.startswith('unfinished') for j in jobs)} unfinished, "
                 f"{sum(j.status == 'never started' for j in jobs)} never started; "
                 f"{len(groups)} configurations.")
    if common:
        lines.append(f"Overrides shared by every job: `{' '.join(common)}`.")
    protocol = next((j.results.get("evaluation_protocol") for j in complete
                     if j.results.get("evaluation_protocol")), None)
    if protocol:
        lines += ["", f"Evaluation: {protocol}."]
    lines += ["", "Return: mean over seeds ± half-width of its 95% confidence interval (Student "
              "t, seeds − 1 degrees of freedom; no ± with one seed). Each seed's own value is "
              "the mean over the evaluation's held-out users. Coverage, exposure Gini, ILD, "
              "novelty and MCD (docs/evaluation.md) likewise over seeds; — where the env "
              "cannot provide one (or a job's results.json predates it).", ""]

    lines += ["## Summary", "", "| configuration | seeds | " + " | ".join(policies) + " |",
              "|---|---|" + "---:|" * len(policies)]
    for configuration, members in groups.items():
        cells = []
        for policy in policies:
            values = [v for _, v in returns(members, policy)]
            cells.append(fmt(*mean_ci95(values)) if values else "—")
        seeds = ", ".join(str(j.seed) for j in members if j.status == "complete") or "—"
        lines.append(f"| {configuration} | {seeds} | " + " | ".join(cells) + " |")

    for configuration, members in groups.items():
        lines += ["", f"## {configuration}", ""]
        done = [j for j in members if j.status == "complete"]
        if not done:
            lines.append("No complete job.")
        else:
            lines += ["| policy | return | clicks | CTR | episode length | "
                      + " | ".join(ITEM_METRICS.values()) + " | return per seed |",
                      "|---|---:|---:|---:|---:|" + "---:|" * len(ITEM_METRICS) + "---|"]
            for policy in policies:
                pairs = returns(done, policy)
                if not pairs:
                    continue
                stats = [stats_of(j, policy) for j, _ in pairs]
                per_seed = ", ".join(f"seed {j.seed}: {v:.1f}" for j, v in pairs)
                lines.append(
                    f"| {policy} | {fmt(*mean_ci95([v for _, v in pairs]))} "
                    f"| {fmt(*mean_ci95([s['clicks_mean'] for s in stats]))} "
                    f"| {fmt(*mean_ci95([s['ctr'] for s in stats]), digits=3)} "
                    f"| {fmt(*mean_ci95([s['episode_length'] for s in stats]))} | "
                    + "".join(f"{item_metric_cell(stats, key)} | " for key in ITEM_METRICS)
                    + f"{per_seed} |"
                )
            frames = [j.results.get("frames") for j in done if j.results.get("frames") is not None]
            if frames:
                lines += ["", f"Frames per job: {', '.join(str(f) for f in frames)}."]
        lines += ["", "Jobs: " + ", ".join(
            f"`{j.name}` ({j.status}" + (f", seed {j.seed})" if j.seed is not None else ")")
            for j in members) + "."]

    broken = [j for j in jobs if j.status != "complete"]
    if broken:
        lines += ["", "## Jobs without results", "", "| job | overrides | status | reason |",
                  "|---|---|---|---|"]
        for job in broken:
            reason = job.failure or ("the sweep stopped before it" if not job.started else "")
            reason = reason.replace("|", "\\|")
            overrides = " ".join(job.overrides)
            lines.append(f"| `{job.name}` | `{overrides}` | {job.status} | {reason} |")

    optuna_file = sweep_dir / "optimization_results.yaml"
    if optuna_file.is_file():
        best = OmegaConf.to_container(OmegaConf.load(optuna_file))
        if "best_value" in best:
            params = " ".join(f"{k}={v}" for k, v in best.get("best_params", {}).items())
            lines += ["", "## Optuna", "", f"Best trial of the study so far: objective (the "
                      f"agent's final return) {best['best_value']:.1f} with `{params}` "
                      "(optimization_results.yaml, written by the last invocation)."]
    return "\n".join(lines) + "\n"


def plot_report(jobs: list[Job], path: Path) -> int:
    """Evaluation return against frames, one line per configuration; returns the lines drawn."""
    fig, ax = plt.subplots(figsize=(8, 4.8))
    drawn = 0
    for i, (configuration, members) in enumerate(by_configuration(jobs).items()):
        curves = [j.curve for j in members if j.status == "complete" and j.curve]
        if not curves:
            continue
        # Seeds of one configuration evaluate at the same optimiser steps: align on them.
        steps = sorted(set.intersection(*(set(s for s, _, _ in c) for c in curves)))
        points = [[next((f, r) for s2, f, r in c if s2 == s) for c in curves] for s in steps]
        frames = [sum(f for f, _ in p) / len(p) for p in points]
        mean = [sum(r for _, r in p) / len(p) for p in points]
        color = f"C{i % 10}"
        ax.plot(frames, mean, marker="o", color=color,
                label=f"{configuration} ({len(curves)} seeds)")
        if len(curves) > 1:
            ax.fill_between(frames, [min(r for _, r in p) for p in points],
                            [max(r for _, r in p) for p in points], color=color, alpha=0.2)
        drawn += 1
    complete = [j for j in jobs if j.status == "complete"]
    for k, policy in enumerate(policies_of(complete)[1:]):
        values = [v for _, v in returns(complete, policy)]
        ax.axhline(sum(values) / len(values), color="0.4", linestyle=("--", ":", "-.")[k % 3],
                   linewidth=1, label=f"{policy} (mean of all jobs)")
    ax.set_xlabel("environment frames")
    ax.set_ylabel("mean return (held-out users)")
    ax.set_title("greedy evaluation return; band: lowest to highest seed")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn


class NoWandbReport(Exception):
    """Why no W&B Report can be built now (one line)."""


def wandb_settings(jobs: list[Job]) -> dict[str, Any]:
    """project, entity and group of the sweep's W&B runs, from the first job that used W&B."""
    for job in jobs:
        config = OmegaConf.load(job.folder / ".hydra" / "config.yaml")
        options = config.get("logger", {}).get("wandb")
        if options is not None:
            group = options.get("group") or sweep_group(job.folder.parent)
            return {"project": options.get("project"), "entity": options.get("entity"),
                    "group": group}
    raise NoWandbReport("the sweep's jobs did not log to W&B (run them with logger=wandb or "
                        "logger=[csv,wandb])")


def wandb_report(project: str, entity: str | None, group: str, markdown: str) -> Any:
    """The W&B Report of one sweep (not saved): the runs of its group, one line per
    configuration (the runs' ``configuration`` config key) with a min..max band over seeds, a
    run comparer and report.md's tables."""
    import wandb_workspaces.reports.v2 as wr
    from wandb_workspaces import expr

    scope = {"project": project, **({"entity": entity} if entity else {})}

    def line_plot(title: str, x: str, y: str) -> Any:
        return wr.LinePlot(title=title, x=x, y=[y], groupby=wr.Config("configuration"),
                           groupby_aggfunc="mean", groupby_rangefunc="minmax")

    return wr.Report(
        **scope,
        title=f"recrl sweep {group}"[:128],
        description="Built by python -m recrl.report from the sweep folder's runs.",
        blocks=[
            wr.PanelGrid(
                runsets=[wr.Runset(**scope, name=group, filters=[expr.Metric("Group") == group])],
                panels=[
                    line_plot("evaluation return (held-out users)", "val/frames", "val/return"),
                    line_plot("training loss", "train/frames", "train/loss"),
                    wr.RunComparer(diff_only="split"),
                ],
            ),
            wr.MarkdownBlock(text=markdown),
        ],
    )


def build_wandb_report(jobs: list[Job], markdown: str) -> str:
    """Saves a W&B Report of the sweep's runs; returns its URL."""
    settings = wandb_settings(jobs)
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in LOCAL_MODES:
        raise NoWandbReport(f"W&B is offline here (WANDB_MODE={mode})")
    unsynced = [p for j in jobs for p in (j.folder / "wandb").glob("offline-run-*")
                if not list(p.glob("*.wandb.synced"))]
    if unsynced:
        raise NoWandbReport(f"{len(unsynced)} runs were logged offline and are not uploaded yet: "
                            f"wandb sync {unsynced[0].parent.parent.parent}/*/wandb/offline-run-*")
    import wandb

    if not wandb.login(prompt=False, verify=False):
        raise NoWandbReport("no W&B login (wandb login, or WANDB_API_KEY)")
    try:
        report = wandb_report(settings["project"], settings["entity"], settings["group"], markdown)
    except ImportError:
        raise NoWandbReport("W&B Reports need wandb-workspaces (pip install "
                            "wandb-workspaces==0.4.13)") from None
    try:
        report.save()
    except Exception as err:  # network, permissions: one line, not a traceback
        raise NoWandbReport(f"could not save the report to W&B: {err}".splitlines()[0]) from None
    return report.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recrl.report",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sweep", type=Path, help="a multirun sweep folder (outputs/multirun/...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for report.md and report.png (default: the sweep folder)")
    parser.add_argument("--wandb", action="store_true",
                        help="also build a W&B Report of the sweep's runs (needs W&B online)")
    args = parser.parse_args(argv)
    jobs = load_jobs(args.sweep)
    if not jobs:
        print(f"recrl.report: no job folders (*/.hydra/overrides.yaml) in {args.sweep}",
              file=sys.stderr)
        return 1
    common = label_configurations(jobs)
    out = args.out or args.sweep
    out.mkdir(parents=True, exist_ok=True)
    markdown = markdown_report(args.sweep, jobs, common)
    (out / REPORT_MD).write_text(markdown)
    plot_report(jobs, out / REPORT_PNG)
    print(f"{out / REPORT_MD}\n{out / REPORT_PNG}")
    if args.wandb:
        try:
            print(f"W&B Report: {build_wandb_report(jobs, markdown)}")
        except NoWandbReport as why:
            print(f"recrl.report: no W&B Report: {why}; report.md and report.png are written",
                  file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
