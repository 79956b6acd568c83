"""Comparing two runs user by user (recrl/compare.py), against hand-computed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recrl.compare import ComparisonError, compare_runs, main

POPULATION = {"env": {"_target_": "recrl.envs.LoggedEnv", "format": "ml-100k"}, "seed": 1,
              "num_users": 3}


def write_run(folder: Path, returns: dict[str, list[float]], **population) -> Path:
    folder.mkdir()
    (folder / "test_returns.json").write_text(json.dumps(
        {"population": {**POPULATION, **population}, "returns": returns}))
    return folder


def test_the_gap_is_taken_user_by_user(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", {"agent": [3.0, 5.0, 7.0], "popular": [0.0, 0.0, 0.0]})
    b = write_run(tmp_path / "b", {"agent": [1.0, 4.0, 5.0], "popular": [1.0, 1.0, 1.0]})
    result = compare_runs(a, b)
    # Per-user differences 2, 1, 2: mean 5/3, sample sd sqrt(1/3).
    assert result["gap_mean"] == pytest.approx(5 / 3)
    assert result["gap_ci95"] == pytest.approx(1.959964 * math.sqrt(1 / 3) / math.sqrt(3))
    assert (result["mean_a"], result["mean_b"], result["num_users"]) == (5.0, 10 / 3, 3)
    assert compare_runs(a, b, policy_b="popular")["gap_mean"] == pytest.approx(4.0)


def test_runs_on_other_users_or_without_the_file_are_refused(tmp_path: Path, capsys) -> None:
    a = write_run(tmp_path / "a", {"agent": [1.0, 2.0, 3.0]})
    b = write_run(tmp_path / "b", {"agent": [1.0, 2.0, 3.0]}, seed=2)
    with pytest.raises(ComparisonError, match="different test users .*seed differ"):
        compare_runs(a, b)
    with pytest.raises(ComparisonError, match="no policy 'oracle'"):
        compare_runs(a, a, policy_b="oracle")
    assert main([str(a), str(tmp_path / "missing")]) == 2
    assert "test_returns.json does not exist" in capsys.readouterr().err
    assert main([str(a), str(a)]) == 0
    assert "+0.00 ± 0.00" in capsys.readouterr().out
