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
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

from recrl.evaluation import paired_gap

#: Written by every RL run (recrl/run.py) beside results.json.
TEST_RETURNS_FILE = "test_returns.json"


class ComparisonError(ValueError):
    """Two runs that cannot be compared user by user; the message says why."""


def read_test_returns(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / TEST_RETURNS_FILE
    if not path.is_file():
        raise ComparisonError(
            f"{path} does not exist: give the folder of a finished RL run (pretraining runs and "
            "runs from before test_returns.json existed have none)"
        )
    data = json.loads(path.read_text())
    if "population" not in data or "returns" not in data:
        raise ComparisonError(f"{path} has no 'population' and 'returns': not a recrl file")
    return data


def compare_runs(run_a: Path, run_b: Path, policy_a: str = "agent",
                 policy_b: str = "agent") -> dict[str, Any]:
    """Mean and 95% CI of ``policy_a`` of ``run_a`` minus ``policy_b`` of ``run_b``, user by user,
    with both runs' means. Refuses runs whose test users differ."""
    a, b = read_test_returns(run_a), read_test_returns(run_b)
    differing = sorted(key for key in a["population"].keys() | b["population"].keys()
                       if a["population"].get(key) != b["population"].get(key))
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--policy", default="agent", help="run B's policy (default: its agent)")
    parser.add_argument("--policy-a", default="agent", help="run A's policy (default: its agent)")
    args = parser.parse_args(argv)
    try:
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
