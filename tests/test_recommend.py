"""Batch recommendations from a run folder (`recrl.recommend`, `recrl.inference`)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from recrl.inference import RunLoadError, load_run
from recrl.recommend import main, recommend
from tests.conftest import run_recrl
from tests.test_env_logged import NAMED, new_users_log


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run on a log with text ids (a real `python -m recrl.run` process), and the log."""
    tmp_path = tmp_path_factory.mktemp("recommend")
    log = tmp_path / "log.csv"
    new_users_log(log)
    run_dir = tmp_path / "run"
    proc = run_recrl(run_dir, "debug=smoke", "env=logged", f"data.path={log}", "data.format=table",
                     *NAMED, "data.min_item_interactions=1", f"data.cache_dir={tmp_path / 'cache'}",
                     "env.fit_epochs=20", "env.history_length=4", "env.max_episode_steps=10",
                     "evaluation.ranking.num_negatives=10", "trainer.enable_progress_bar=false",
                     timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, log


def read_log_frame(log: Path) -> pd.DataFrame:
    """The log as `recrl.data` reads it (columns user, item, timestamp, rating)."""
    from recrl.data.formats import read_log

    return read_log("table", log, columns={"user": "uid", "item": "sku", "timestamp": "ts",
                                           "rating": "stars"}).interactions


@pytest.mark.slow
def test_every_user_gets_k_unseen_items_by_their_log_ids(trained, tmp_path: Path) -> None:
    run_dir, log = trained
    out = tmp_path / "recs.parquet"
    main([str(run_dir), "--data", str(log), "--k", "5", "--out", str(out)])  # the run's read options
    recs = pd.read_parquet(out)
    frame = read_log_frame(log)
    assert set(recs["user"]) == set(frame["user"])  # every user of the log, by its own id
    assert (recs.groupby("user")["rank"].apply(list) == [[1, 2, 3, 4, 5]] * recs["user"].nunique()).all()
    assert recs["item"].str.startswith("sku-").all()  # the log's item ids, not indices
    seen = frame.groupby("user")["item"].apply(set)
    assert not any(item in seen[user] for user, item in zip(recs["user"], recs["item"]))
    assert (recs.groupby("user")["score"].apply(lambda s: s.is_monotonic_decreasing)).all()
    assert not recs["fallback"].any()


@pytest.mark.slow
def test_the_top_k_is_the_policys_own_ranking_after_the_users_last_items(trained) -> None:
    run_dir, log = trained
    policy = load_run(run_dir)
    frame = read_log_frame(log)
    recs = recommend(policy, frame, 3, progress=False)
    user = frame.groupby("user")["rating"].apply(lambda r: r.notna().all()).idxmax()
    mine = frame[frame["user"] == user].sort_values("timestamp", kind="stable")
    index_of = policy.index_of()
    items = [index_of[i] for i in mine["item"] if i in index_of]
    history = torch.tensor([[0] * max(0, 4 - len(items)) + items[-4:]])
    watch = torch.tensor([[0.0] * max(0, 4 - len(items)) + mine["rating"].tolist()[-4:]])
    scores = policy.scores(history, watch)[0]
    scores[0] = float("-inf")
    scores[items] = float("-inf")
    expected = policy.item_ids[scores.topk(3).indices.numpy()].tolist()
    assert recs[recs["user"] == user]["item"].tolist() == expected


@pytest.mark.slow
def test_a_user_without_known_items_gets_the_most_popular_as_a_fallback(trained) -> None:
    run_dir, log = trained
    policy = load_run(run_dir)
    cold = pd.DataFrame({"user": ["newcomer"], "item": ["sku-that-never-was"], "timestamp": [0],
                         "rating": [5.0]})
    recs = recommend(policy, cold, 4, progress=False)
    assert recs["fallback"].all()
    popular = policy.popularity.clone()
    popular[0] = float("-inf")
    assert recs["item"].tolist() == policy.item_ids[popular.topk(4).indices.numpy()].tolist()


@pytest.mark.slow
def test_bad_requests_end_with_one_line(trained, tmp_path: Path) -> None:
    run_dir, log = trained
    for args, expected in [
        (["--k", "0"], "--k must be a positive integer"),
        (["--k", "100000"], "larger than the run's catalogue"),
        (["--out", str(tmp_path / "recs.txt")], "--out must end in .parquet or .csv"),
        (["data.sep"], "read options are data.<key>=<value>"),
    ]:
        with pytest.raises(SystemExit) as error:
            main([str(run_dir), "--data", str(log), *args])
        assert expected in str(error.value.code), (args, error.value.code)
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_a_folder_that_is_not_a_finished_run_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(RunLoadError, match="not a run folder"):
        load_run(tmp_path)
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("{}\n")
    with pytest.raises(RunLoadError, match="did not finish"):
        load_run(tmp_path)
    (tmp_path / "results.json").write_text("{}")
    with pytest.raises(RunLoadError, match="no checkpoints/policy.pt"):
        load_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "policy.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunLoadError, match="not a readable checkpoint"):
        load_run(tmp_path)


@pytest.mark.slow
def test_a_truncated_policy_file_is_named(trained, tmp_path: Path) -> None:
    import shutil

    run_dir, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    weights = copy / "checkpoints" / "policy.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(RunLoadError, match="not a readable checkpoint"):
        load_run(copy)
