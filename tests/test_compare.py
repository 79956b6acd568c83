"""Comparing two runs user by user (recrl/compare.py), against hand-computed numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from recrl.compare import ComparisonError, compare_over_seeds, compare_runs, main

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


def write_seeded_run(folder: Path, seed: int, agent: list[float]) -> Path:
    write_run(folder, {"agent": agent})
    (folder / "results.json").write_text(json.dumps({"seed": seed}))
    return folder


def test_folders_of_runs_are_paired_by_seed_and_summarised_over_seeds(tmp_path: Path,
                                                                       capsys) -> None:
    # Sweep A's job numbers do not follow its seeds: pairing must read the seed, not the name.
    _mkdir(tmp_path / "a")
    _mkdir(tmp_path / "b")
    for job, seed, agent in ((0, 1, [4.0, 4.0, 4.0]), (1, 0, [3.0, 5.0, 7.0]),
                             (2, 5, [9.0, 9.0, 9.0])):
        write_seeded_run(tmp_path / "a" / str(job), seed, agent)
    write_seeded_run(tmp_path / "b" / "0", 0, [1.0, 4.0, 5.0])  # seed 0 gaps 2, 1, 2: 5/3
    write_seeded_run(tmp_path / "b" / "1", 1, [4.0, 3.0, 5.0])  # seed 1 gaps 0, 1, -1: 0
    result = compare_over_seeds(tmp_path / "a", tmp_path / "b")
    assert list(result["per_seed"]) == [0, 1]
    assert result["per_seed"][0]["gap_mean"] == pytest.approx(5 / 3)
    assert result["per_seed"][1]["gap_mean"] == pytest.approx(0.0)
    # Two seeds: mean 5/6, sd |5/3 - 0| / sqrt(2), t(1 dof) = 12.706.
    assert result["gap_mean"] == pytest.approx(5 / 6)
    assert result["gap_ci95"] == pytest.approx(12.706 * (5 / 3) / math.sqrt(2) / math.sqrt(2))
    assert (result["only_a"], result["only_b"]) == ([5], [])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "| 0 | 5.0 | 3.3 | +1.67" in out and "over 2 seeds: +0.83" in out
    assert "only in A: seeds [5]" in out


def test_folders_that_cannot_be_paired_by_seed_are_refused(tmp_path: Path) -> None:
    _mkdir(tmp_path / "a")
    _mkdir(tmp_path / "b")
    write_seeded_run(tmp_path / "a" / "0", 0, [1.0, 2.0, 3.0])
    write_seeded_run(tmp_path / "b" / "0", 3, [1.0, 2.0, 3.0])
    with pytest.raises(ComparisonError, match="no seed was run in both"):
        compare_over_seeds(tmp_path / "a", tmp_path / "b")
    write_seeded_run(tmp_path / "a" / "1", 0, [1.0, 2.0, 3.0])
    with pytest.raises(ComparisonError, match="both ran seed 0"):
        compare_over_seeds(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ComparisonError, match="holds no finished RL run"):
        compare_over_seeds(_mkdir(tmp_path / "empty"), tmp_path / "b")
    (tmp_path / "b" / "0" / "results.json").write_text('{"seed": ')  # cut off mid-write
    with pytest.raises(ComparisonError, match=r"b/0/results.json is not valid JSON"):
        compare_over_seeds(tmp_path / "b", tmp_path / "b")


def _mkdir(folder: Path) -> Path:
    folder.mkdir()
    return folder
