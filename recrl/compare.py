"""Two runs compared user by user: ``python -m recrl.compare RUN_A RUN_B``.

Every run's final evaluation writes ``test_returns.json``: each held-out test user's return under
the agent and under each baseline. When two runs met the same users (same simulator config,
evaluation seed and number of users, on any number of processes: the file's ``population``),
the difference of their agents' returns user by user has a far tighter interval than the two
runs' separate return intervals, because users differ much more from each other than two
policies do. This is the test behind "a run from a pretrained encoder beats the same run from
scratch".

    python -m recrl.compare outputs/2026-11-30/10-00-00 outputs/2026-11-30/11-00-00
    python -m recrl.compare RUN_A RUN_B --policy popular     # A's agent minus B's popular

One pair of runs says whether *these two trainings* differ; whether a method helps is a question
over training seeds. Give two folders of runs instead (two Hydra sweeps, e.g. ``-m seed=0,1,2``
with and without ``encoder.init_from``): runs are paired by their ``seed`` (each pair must have
met the same test users), each pair's user-by-user gap is printed, and the seeds' gaps are
summarised by their mean and its 95% Student-t interval over seeds, the interval that counts
the run-to-run spread of training as well as the users:

    python -m recrl.compare outputs/multirun/pretrained outputs/multirun/scratch
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from recrl.evaluation import paired_gap
from recrl.run_folder import TEST_RETURNS_FILE  # written by every RL run beside results.json
from recrl.stats import mean_ci95_over_seeds


class ComparisonError(ValueError):
    """Two runs that cannot be compared user by user; the message says why."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ComparisonError(f"{path} is not valid JSON ({err}): a run that was cut off while "
                              "writing it? Re-run it or leave it out") from err


def read_test_returns(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / TEST_RETURNS_FILE
    if not path.is_file():
        raise ComparisonError(
            f"{path} does not exist: give the folder of a finished RL run (pretraining runs and "
            "runs from before test_returns.json existed have none), or two folders of runs to "
            "compare over seeds"
        )
    data = read_json(path)
    if "population" not in data or "returns" not in data:
        raise ComparisonError(f"{path} has no 'population' and 'returns': not a recrl file")
    return data


def differing_population(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The keys (``env``, ``seed``, ``num_users``) on which two evaluation populations differ:
    none means the same test users in the same order."""
    return sorted(key for key in a.keys() | b.keys() if a.get(key) != b.get(key))


def compare_runs(run_a: Path, run_b: Path, policy_a: str = "agent",
                 policy_b: str = "agent") -> dict[str, Any]:
    """Mean and 95% CI of ``policy_a`` of ``run_a`` minus ``policy_b`` of ``run_b``, user by user,
    with both runs' means. Refuses runs whose test users differ."""
    a, b = read_test_returns(run_a), read_test_returns(run_b)
    differing = differing_population(a["population"], b["population"])
    if differing:
        raise ComparisonError(
            f"{run_a} and {run_b} evaluated different test users (their {', '.join(differing)} "
            "differ): a per-user comparison needs the same env config, evaluation.seed and "
            "evaluation.final_num_users"
        )
    for run, data, policy in ((run_a, a, policy_a), (run_b, b, policy_b)):
        if policy not in data["returns"]:
            raise ComparisonError(f"{run} has no policy {policy!r}; it has "
                                  f"{', '.join(sorted(data['returns']))}")
    returns_a = torch.tensor(a["returns"][policy_a], dtype=torch.float64)
    returns_b = torch.tensor(b["returns"][policy_b], dtype=torch.float64)
    gap, gap_ci95 = paired_gap(returns_a, returns_b)
    return {"gap_mean": gap, "gap_ci95": gap_ci95, "num_users": returns_a.numel(),
            "mean_a": returns_a.mean().item(), "mean_b": returns_b.mean().item()}


def is_run(folder: Path) -> bool:
    return (Path(folder) / TEST_RETURNS_FILE).is_file()


def runs_by_seed(folder: Path) -> dict[int, Path]:
    """The finished RL runs in ``folder`` or its sub-folders (a sweep), keyed by training seed
    (``results.json``'s ``seed``). Refuses two runs with one seed: pairing would be a guess."""
    runs: dict[int, Path] = {}
    for returns_file in sorted(Path(folder).rglob(TEST_RETURNS_FILE)):
        run = returns_file.parent
        results_file = run / "results.json"
        seed = read_json(results_file).get("seed") if results_file.is_file() else None
        if seed is None:
            raise ComparisonError(f"{run} has no 'seed' in results.json: cannot pair it by seed")
        if seed in runs:
            raise ComparisonError(
                f"{runs[seed]} and {run} both ran seed {seed}: give folders that hold one run per "
                "seed (e.g. one sweep per configuration)"
            )
        runs[seed] = run
    if not runs:
        raise ComparisonError(f"{folder} holds no finished RL run ({TEST_RETURNS_FILE} files)")
    return runs


def compare_over_seeds(folder_a: Path, folder_b: Path, policy_a: str = "agent",
                       policy_b: str = "agent") -> dict[str, Any]:
    """Per seed the user-by-user gap of ``policy_a`` (runs in ``folder_a``) minus ``policy_b``
    (runs in ``folder_b``), and the gaps' mean with its 95% t-interval over seeds (NaN for a
    single seed). Seeds run on one side only are listed, not compared."""
    runs_a, runs_b = runs_by_seed(folder_a), runs_by_seed(folder_b)
    seeds = sorted(runs_a.keys() & runs_b.keys())
    if not seeds:
        raise ComparisonError(
            f"no seed was run in both folders ({folder_a}: seeds {sorted(runs_a)}; {folder_b}: "
            f"seeds {sorted(runs_b)})"
        )
    per_seed = {seed: compare_runs(runs_a[seed], runs_b[seed], policy_a, policy_b)
                for seed in seeds}
    gap, gap_ci95 = mean_ci95_over_seeds([r["gap_mean"] for r in per_seed.values()])
    return {"per_seed": per_seed, "gap_mean": gap, "gap_ci95": gap_ci95,
            "only_a": sorted(runs_a.keys() - runs_b.keys()),
            "only_b": sorted(runs_b.keys() - runs_a.keys())}


def print_over_seeds(result: dict[str, Any], policy_a: str, policy_b: str) -> None:
    print(f"| seed | {policy_a} of A | {policy_b} of B | gap, user by user (95% CI) |\n"
          "|---:|---:|---:|---:|")
    for seed, r in result["per_seed"].items():
        print(f"| {seed} | {r['mean_a']:.1f} | {r['mean_b']:.1f} | "
              f"{r['gap_mean']:+.2f} ± {r['gap_ci95']:.2f} |")
    pairs = list(result["per_seed"].values())
    ahead = sum(r["gap_mean"] - r["gap_ci95"] > 0 for r in pairs)
    behind = sum(r["gap_mean"] + r["gap_ci95"] < 0 for r in pairs)
    print(f"\nover {len(pairs)} seeds: {result['gap_mean']:+.2f} ± {result['gap_ci95']:.2f} "
          f"(95% CI, Student t over seeds); A ahead on {sum(r['gap_mean'] > 0 for r in pairs)}; "
          f"outside the user-by-user interval: ahead on {ahead}, behind on {behind}")
    for side in ("a", "b"):
        if result[f"only_{side}"]:
            print(f"not compared, only in {side.upper()}: seeds {result[f'only_{side}']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path, help="a run folder, or a folder of runs (a sweep)")
    parser.add_argument("run_b", type=Path, help="the same kind as run_a")
    parser.add_argument("--policy", default="agent", help="run B's policy (default: its agent)")
    parser.add_argument("--policy-a", default="agent", help="run A's policy (default: its agent)")
    args = parser.parse_args(argv)
    try:
        if not is_run(args.run_a) and not is_run(args.run_b):
            result = compare_over_seeds(args.run_a, args.run_b, args.policy_a, args.policy)
            print_over_seeds(result, args.policy_a, args.policy)
            return 0
        result = compare_runs(args.run_a, args.run_b, args.policy_a, args.policy)
    except ComparisonError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.policy_a} of {args.run_a}: {result['mean_a']:.1f}\n"
          f"{args.policy} of {args.run_b}: {result['mean_b']:.1f}\n"
          f"difference, user by user ({result['num_users']} users): "
          f"{result['gap_mean']:+.2f} ± {result['gap_ci95']:.2f} (95% CI)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
