"""Using a trained policy: batch recommendations from a run folder (`recrl.recommend`,
`recrl.inference`) and the HTTP server (`recrl.serve`, a real process and a real client)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

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


# -- the HTTP server (a real process, a real client) -------------------------------------------
@pytest.fixture(scope="module")
def server(trained, tmp_path_factory: pytest.TempPathFactory):
    """`python -m recrl.serve <run>` on a free local port with a bearer token, until the module's
    tests are done; then stopped with SIGTERM (the clean shutdown is asserted)."""
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from tests.conftest import subprocess_env

    run_dir, _ = trained
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "recrl.serve", str(run_dir), "--port", str(port)],
            env=subprocess_env(threads=1, RECRL_SERVE_TOKEN="s3cret"), stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": "Bearer s3cret"}
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", headers=headers, timeout=2).text == "ok":
                break
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    workers = child_processes(proc.pid)
    assert workers, "LitServe runs its model and its HTTP server in worker processes"
    yield SimpleNamespace(url=url, headers=headers, proc=proc, log=log)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
        deadline = time.monotonic() + 15  # the resource tracker exits just after the server
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = [pid for pid in workers if alive(pid)]
        assert not survivors, f"worker processes left running after SIGTERM: {survivors}"
        # No traceback but LitServe 0.2.19's own at shutdown: its worker-monitor thread reads
        # a manager that the shutdown has just closed ("Monitoring worker crashed").
        text = log.read_text()
        assert text.count("Traceback") == text.count("Monitoring worker crashed"), text[-3000:]
    finally:  # never leave a server behind to slow the rest of the suite down
        for pid in [proc.pid, *workers]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def child_processes(pid: int) -> list[int]:
    """The process ids whose parent is ``pid`` (Linux /proc)."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def post(server, body, headers=None):
    import httpx

    return httpx.post(f"{server.url}/recommend", json=body,
                      headers=server.headers if headers is None else headers, timeout=30)


@pytest.mark.slow
@pytest.mark.e2e
def test_the_server_answers_the_policys_top_k_over_http(server, trained) -> None:
    run_dir, log = trained
    policy = load_run(run_dir)
    history = policy.item_ids[[3, 7, 1, 12]].tolist()
    reply = post(server, {"history": history, "k": 4, "exclude": [history[0]]})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    scores = policy.scores(torch.tensor([[3, 7, 1, 12]]))[0]
    scores[[0, 3, 7, 1, 12]] = float("-inf")
    top = scores.topk(4)
    assert body["items"] == policy.item_ids[top.indices.numpy()].tolist()
    assert body["scores"] == pytest.approx(top.values.tolist(), abs=1e-5)
    assert body["fallback"] is False
    # The same histories through the batch recommender give the same top-k.
    frame = pd.DataFrame({"user": ["u"] * 4, "item": history, "timestamp": range(4),
                          "rating": [float("nan")] * 4})
    batch = recommend(policy, frame.drop(columns="rating"), 4, progress=False)
    reply = post(server, {"history": history, "k": 4})
    assert reply.json()["items"] == batch["item"].tolist()


@pytest.mark.slow
@pytest.mark.e2e
def test_an_empty_history_gets_the_most_popular_items_flagged(server, trained) -> None:
    policy = load_run(trained[0])
    popular = policy.popularity.clone()
    popular[0] = float("-inf")
    reply = post(server, {"history": [], "k": 3}).json()
    assert reply["fallback"] is True
    assert reply["items"] == policy.item_ids[popular.topk(3).indices.numpy()].tolist()


@pytest.mark.slow
@pytest.mark.e2e
def test_bad_requests_get_a_4xx_naming_the_problem(server) -> None:
    import httpx

    cases = [
        ({"history": ["no-such-item"], "k": 3}, 400, "unknown item id"),
        ({"history": [], "k": 0}, 400, "k must be between 1 and the catalogue size"),
        ({"history": [], "k": 10**6}, 400, "k must be between 1 and the catalogue size"),
        ({"history": ["sku-01"] * 1001, "k": 3}, 400, "at most 1000 are accepted"),
        ({"history": "sku-01", "k": 3}, 422, "valid list"),
    ]
    for body, status, message in cases:
        reply = post(server, body)
        assert reply.status_code == status and message in reply.text, (body, reply.text)
    malformed = httpx.post(f"{server.url}/recommend", content=b'{"history": [', timeout=10,
                           headers={**server.headers, "Content-Type": "application/json"})
    assert malformed.status_code == 422 and "JSON decode error" in malformed.text
    huge = httpx.post(f"{server.url}/recommend", content=b"[" + b"1," * 600_000 + b"1]",
                      headers={**server.headers, "Content-Type": "application/json"}, timeout=30)
    assert huge.status_code == 413
    assert server.proc.poll() is None  # still serving


@pytest.mark.slow
@pytest.mark.e2e
def test_every_request_needs_the_token_when_one_is_set(server) -> None:
    import httpx

    for path in ("/health", "/info"):
        assert httpx.get(f"{server.url}{path}", timeout=10).status_code == 401
    assert post(server, {"history": [], "k": 1}, headers={}).status_code == 401
    wrong = {"Authorization": "Bearer guess"}
    assert post(server, {"history": [], "k": 1}, headers=wrong).status_code == 401
    info = httpx.get(f"{server.url}/info", headers=server.headers, timeout=10).json()["model"]
    assert info["num_items"] > 0 and info["algo"] == "DQNModule"


def test_a_run_folder_without_a_checkpoint_fails_at_start_up_in_one_line(tmp_path: Path) -> None:
    from recrl.serve import main as serve

    with pytest.raises(SystemExit) as error:
        serve([str(tmp_path)])
    assert str(error.value.code).startswith("recrl.serve:") and "not a run folder" in str(
        error.value.code)
