"""bench/recbole_reference.py: the RecBole atomic file it writes reproduces recrl's leave-one-out
split (ties in time included), the check of the split a RecBole process reports catches a wrong
one, and RecBole's settings are the comparison's. None of this needs RecBole; the last test runs
RecBole's Pop on a tiny log when RecBole's venv is there (docs/recbole.md), and skips otherwise."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from recrl.data import PreprocessConfig, Sequences, load_sequences
from tests.conftest import load_bench

reference = load_bench("recbole_reference")

# user, item, time: user 7 has two items at time 3 (file order decides), user 5 is listed out of
# order, user 9 has only two items (dropped by min_user_interactions=3).
LOG = """user,item,timestamp
7,10,1
7,12,3
7,11,3
7,13,2
7,14,9
5,12,8
5,10,1
5,13,4
5,11,6
9,10,1
9,11,2
"""


@pytest.fixture
def sequences(tmp_path: Path) -> Sequences:
    log = tmp_path / "log.csv"
    log.write_text(LOG)
    config = PreprocessConfig(min_user_interactions=3, min_item_interactions=1)
    return load_sequences(log, "table", config)


def test_atomic_file_reproduces_recrl_split(sequences: Sequences, tmp_path: Path) -> None:
    path = reference.write_atomic(sequences, tmp_path / "data", "toy")
    assert path == tmp_path / "data" / "toy" / "toy.inter"
    assert path.read_text().splitlines()[0].split("\t") == list(reference.HEADER)
    expected = reference.expected_split(sequences)
    # recrl's order: by time, ties in file order (user 7: 10, 13, 12, 11, 14)
    raw = {str(u): [int(sequences.item_ids[i]) for i in sequences.user_sequence(u)]
           for u in range(sequences.num_users)}
    assert raw == {"0": [10, 13, 11, 12], "1": [10, 13, 12, 11, 14]}
    assert reference.read_back_split(path) == expected
    assert reference.split_differences(expected, reference.read_back_split(path)) == []


def test_split_differences_name_the_user() -> None:
    expected = {"0": ([1, 2], 3, 4), "1": ([2, 3], 4, 1)}
    wrong = {"0": ([1, 2], 4, 3), "1": ([2, 3], 4, 1)}
    (problem,) = reference.split_differences(expected, wrong)
    assert problem.startswith("user 0:")
    assert reference.split_differences(expected, {"0": expected["0"]}) == [
        "users differ: 1 missing, 0 extra"]


def dump_of(sequences: Sequences, length: int | None, swap: bool = False) -> dict:
    """The split a RecBole process reports for ``sequences`` (runner's ``split``), built by hand:
    sequential (``length``) training rows are every training item but a user's first."""
    dump = {phase: {"user": [], "item": [], "time": []} for phase in ("train", "valid", "test")}
    if length is not None:
        dump["valid"]["history"], dump["test"]["history"] = [], []
    for user in range(sequences.num_users):
        items = sequences.user_sequence(user).tolist()
        first = 1 if length is not None else 0
        for position in range(first, len(items) - 2):
            for key, value in (("user", str(user)), ("item", str(items[position])),
                               ("time", float(position))):
                dump["train"][key].append(value)
        valid, test = (items[-1], items[-2]) if swap else (items[-2], items[-1])
        for phase, item, before in (("valid", valid, items[:-2]), ("test", test, items[:-1])):
            dump[phase]["user"].append(str(user))
            dump[phase]["item"].append(str(item))
            dump[phase]["time"].append(0.0)
            if length is not None:
                dump[phase]["history"].append([str(i) for i in before[-length:]])
    return dump


@pytest.mark.parametrize("length", [None, 2, 50])
def test_recbole_split_check(sequences: Sequences, length: int | None) -> None:
    assert reference.recbole_split_differences(dump_of(sequences, length), sequences, length) == []
    problems = reference.recbole_split_differences(dump_of(sequences, length, swap=True),
                                                   sequences, length)
    assert problems and problems[0].startswith("valid, user")


def test_recbole_split_check_catches_a_truncated_history(sequences: Sequences) -> None:
    dump = dump_of(sequences, 50)
    dump["test"]["history"][0] = dump["test"]["history"][0][1:]
    (problem,) = reference.recbole_split_differences(dump, sequences, 50)
    assert problem.startswith("test, user 0: history")


def test_recbole_config_fixes_the_comparison(tmp_path: Path) -> None:
    args = reference.parse_args(["--max-len", "20", "--epochs", "3", "--config",
                                 "train_batch_size=256", "learning_rate=0.01"])
    sasrec = reference.recbole_config(args, "SASRec", tmp_path, tmp_path)
    assert sasrec["eval_args"] == {"split": {"LS": "valid_and_test"}, "group_by": "user",
                                   "order": "TO", "mode": "full"}
    assert (sasrec["metrics"], sasrec["topk"], sasrec["valid_metric"]) == (
        ["Hit", "NDCG"], [10], "NDCG@10")
    assert sasrec["MAX_ITEM_LIST_LENGTH"] == 20 and sasrec["epochs"] == 3
    assert sasrec["train_neg_sample_args"] is None  # RecBole's CE loss samples no negatives
    assert sasrec["train_batch_size"] == 256 and sasrec["learning_rate"] == 0.01
    assert "stopping_step" not in sasrec  # RecBole's default
    assert "train_neg_sample_args" not in reference.recbole_config(args, "Pop", tmp_path,
                                                                   tmp_path)


def recbole_python() -> str | None:
    """RecBole's interpreter, where its venv has recbole installed (looked up on disk: importing
    RecBole takes seconds)."""
    python = Path(reference.DEFAULT_RECBOLE_PYTHON)
    installed = list((python.parent.parent / "lib").glob("python3*/site-packages/recbole"))
    return str(python) if python.is_file() and installed else None


@pytest.mark.skipif(recbole_python() is None,
                    reason=f"RecBole's venv ({reference.DEFAULT_RECBOLE_PYTHON} with recbole) "
                           "is not there: see docs/recbole.md")
def test_recbole_pop_builds_recrl_split(tmp_path: Path) -> None:
    """RecBole itself (Pop: seconds) on a log where every user has 6 items: the split it builds is
    recrl's, and its Pop with exact counts ranks like recrl's most-popular."""
    rows = ["user,item,timestamp"]
    for user in range(12):
        for step in range(6):
            rows.append(f"{user},{(user * 7 + step * 2) % 15},{step}")
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    config = PreprocessConfig(min_user_interactions=3, min_item_interactions=1)
    sequences = load_sequences(tmp_path / "log.csv", "table", config)
    args = argparse.Namespace(**{**vars(reference.parse_args([])), "name": "toy"})
    inter = reference.write_atomic(sequences, tmp_path / "data", "toy")
    workdir = tmp_path / "work"
    workdir.mkdir()
    result = reference.run_recbole(args, "Pop", inter, workdir)
    assert reference.recbole_split_differences(result["split"], sequences, None) == []
    popular = reference.recrl_most_popular(sequences, history_length=10)
    exact = result["pop_exact_counts"]
    assert exact["HR@10"] == pytest.approx(popular["HR@10"])
    assert exact["NDCG@10"] == pytest.approx(popular["NDCG@10"])
    shutil.rmtree(workdir)


def test_recrl_rows_from_a_pretraining_run(tmp_path: Path) -> None:
    run = tmp_path / "pretrain_run"
    (run / ".hydra").mkdir(parents=True)
    full = {"agent": {"full": {"HR@10": 0.1622, "NDCG@10": 0.0844}},
            "popular": {"full": {"HR@10": 0.0854, "NDCG@10": 0.0442}}}
    (run / "results.json").write_text(json.dumps(
        {"offline_ranking": full, "selected_weights": {"rule": "best", "step": 4500}}))
    (run / ".hydra" / "config.yaml").write_text(
        "env:\n  history_length: 10\ntrainer:\n  max_steps: 5000\nalgo:\n  objective: cloze\n")
    encoder, popular = reference.recrl_run_rows(run)
    assert (encoder["model"], encoder["max_len"], encoder["epochs"]) == (
        "pretrain (cloze), pretrain_run", 10, "5000 steps (best 4500)")
    assert (encoder["HR@10"], popular["NDCG@10"]) == (0.1622, 0.0442)
    table = reference.markdown_table([encoder, popular]).splitlines()
    assert len(table) == 4 and "| 0.1622 | 0.0844 |" in table[2]
