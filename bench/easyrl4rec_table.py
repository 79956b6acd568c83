"""recrl's sweeps on env=coat beside EasyRL4Rec's published Coat table, as one markdown table.

EasyRL4Rec (Yu et al. 2024; ``visual_results/tables/`` of github.com/chongminggao/EasyRL4Rec)
reports R_cumu (return per episode), Length and R_avg = R_cumu / Length, from one seed, averaged
over the last 25% of 100 epochs, without intervals. recrl's rows come from Hydra sweeps over
training seeds (``python -m recrl.run -m env=coat algo=ppo seed=0,1,2,3,4``): each seed's
test return (1,000 test episodes: random users, random initial items, the true world), then
their mean with a 95% Student-t interval over seeds. Baselines (random, most popular, the myopic
oracle) come from the first seed's run (they do not train; most popular counts that run's
training clicks).

    python bench/easyrl4rec_table.py "DQN=outputs/multirun/<dqn sweep>" "PPO=outputs/multirun/<ppo sweep>"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from recrl.stats import mean_ci95_over_seeds

#: EasyRL4Rec's Coat table: (R_cumu, Length, R_avg) per method.
EASYRL4REC_COAT = {
    "model-free": {
        "DQN": (54.35, 22.02, 2.47), "C51": (41.08, 15.83, 2.59), "PG": (79.34, 29.84, 2.66),
        "A2C": (81.80, 29.92, 2.73), "PPO": (73.03, 28.86, 2.53), "DORL": (76.99, 29.58, 2.60),
        "Intrinsic": (77.43, 29.87, 2.59),
    },
    "batch": {
        "BCQ": (9.56, 4.06, 2.36), "CQL": (23.35, 10.28, 2.27), "CRR": (28.96, 13.00, 2.23),
        "SQN": (26.60, 11.51, 2.31),
    },
}


def read_sweep(folder: Path) -> list[dict]:
    """Every finished job's results.json of a sweep folder, by seed."""
    runs = [json.loads(path.read_text()) for path in sorted(folder.glob("*/results.json"))]
    if not runs:
        raise SystemExit(f"{folder}: no */results.json (is it a finished sweep folder?)")
    return sorted(runs, key=lambda run: run["seed"])


def fmt_ci(mean: float, half: float) -> str:
    return f"{mean:.2f} ± {half:.2f}" if half == half else f"{mean:.2f}"


def recrl_rows(label: str, runs: list[dict]) -> list[str]:
    returns = torch.tensor([run["agent"]["return_mean"] for run in runs], dtype=torch.float64)
    lengths = torch.tensor([run["agent"]["episode_length"] for run in runs], dtype=torch.float64)
    mean, half = mean_ci95_over_seeds(returns.tolist())
    seeds = ", ".join(f"{value:.1f}" for value in returns.tolist())
    r_avg = returns.sum().item() / lengths.sum().item()
    return [f"| recrl {label} | **{fmt_ci(mean, half)}** ({len(runs)} seeds: {seeds}) | "
            f"{lengths.mean().item():.2f} | {r_avg:.2f} |"]


def baseline_rows(run: dict) -> list[str]:
    rows = []
    for name, metrics in run["baselines"].items():
        r_avg = metrics["return_mean"] / max(metrics["episode_length"], 1e-9)
        rows.append(f"| recrl baseline: {name} | {fmt_ci(metrics['return_mean'], metrics['return_ci95'])}"
                    f" (over test episodes) | {metrics['episode_length']:.2f} | {r_avg:.2f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweeps", nargs="+", metavar="LABEL=FOLDER",
                        help="a label for the table and a sweep folder of env=coat runs")
    args = parser.parse_args(argv)
    print("| method | R_cumu | Length | R_avg |")
    print("|---|---:|---:|---:|")
    for family, methods in EASYRL4REC_COAT.items():
        for name, (r_cumu, length, r_avg) in methods.items():
            print(f"| EasyRL4Rec {name} ({family}) | {r_cumu:.2f} | {length:.2f} | {r_avg:.2f} |")
    first_run = None
    for spec in args.sweeps:
        label, _, folder = spec.partition("=")
        if not folder:
            raise SystemExit(f"{spec!r}: give LABEL=FOLDER")
        runs = read_sweep(Path(folder))
        first_run = first_run or runs[0]
        print("\n".join(recrl_rows(label, runs)))
    print("\n".join(baseline_rows(first_run)))


if __name__ == "__main__":
    main()
