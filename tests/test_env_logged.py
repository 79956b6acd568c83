"""The logged-data simulator: real start histories, taste-model rewards, boredom, splits."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from torchrl.envs.utils import check_env_specs

from recrl.envs import LoggedEnv
from recrl.envs.logged import DEFAULT_MINIBATCH, FULL_BATCH_MAX_INTERACTIONS, fit_batch_size
from recrl.observation import CLICKED, PADDING
from tests.conftest import (
    ML100K, compose_config, ml100k_data, needs_ml100k, read_results, run_recrl,
    run_recrl_in_process,
)

NUM_USERS, NUM_ITEMS, PER_USER = 40, 30, 12


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small rated log: user u rates items (u + 3k) % 30 + 1 in time order."""
    path = tmp_path_factory.mktemp("log") / "log.csv"
    rows = ["user,item,timestamp,rating"]
    for u in range(NUM_USERS):
        for k in range(PER_USER):
            rows.append(f"{u},{(u + 3 * k) % NUM_ITEMS + 1},{k},{1 + (u + k) % 5}")
    path.write_text("\n".join(rows) + "\n")
    return path


#: The keys of make_env's options that describe the log (DataConfig), not the simulator.
DATA_KEYS = {"format", "columns", "min_rating", "min_user_interactions", "min_item_interactions",
             "validation_user_fraction", "test_user_fraction", "split_seed", "cache_dir"}


def make_env(log_file: Path, num_users: int = 8, **kwargs) -> LoggedEnv:
    options = {"format": "table", "columns": {"rating": "rating"}, "fit_epochs": 50,
               "history_length": 4, "seed": 0, "min_item_interactions": 1,
               "max_episode_steps": 20, **kwargs}
    data = {key: options.pop(key) for key in list(options) if key in DATA_KEYS}
    return LoggedEnv(num_users, data={"path": str(log_file), **data}, **options)


def test_specs(log_file: Path) -> None:
    check_env_specs(make_env(log_file))


def test_a_new_user_starts_from_their_first_logged_items(log_file: Path) -> None:
    env = make_env(log_file, num_users=16)
    td = env.reset()
    sequences = env.sequences
    for row in range(16):
        user = env.users.user[row].item()
        first = sequences.user_sequence(user)[:4]
        assert td["history"][row].tolist() == first.tolist()
        assert td["history_response"][row].tolist() == [CLICKED] * 4
        logged = sequences.ratings[sequences.offsets[user] : sequences.offsets[user] + 4]
        assert td["history_watch_time"][row].tolist() == logged.tolist()
        assert not td["action_mask"][row, first].any()  # already-seen items are masked


def test_a_user_with_fewer_items_than_the_window_starts_left_padded(log_file: Path) -> None:
    # Every user has 12 items; a 15-item window holds all 12, right-aligned after 3 paddings.
    env = make_env(log_file, num_users=4, history_length=15, max_episode_steps=5)
    td = env.reset()
    for row in range(4):
        user = env.users.user[row].item()
        assert td["history"][row].tolist() == [0] * 3 + env.sequences.user_sequence(user).tolist()
        assert td["history_response"][row].tolist() == [PADDING] * 3 + [CLICKED] * 12
        assert td["history_watch_time"][row, :3].tolist() == [0.0] * 3


def test_the_reward_is_the_taste_models_rating(log_file: Path) -> None:
    env = make_env(log_file, num_users=8, boredom_window=0)
    td = env.reset()
    action = torch.stack([td["action_mask"][b].nonzero()[0, 0] for b in range(8)])
    out = env.step(td.set("action", action))
    taste, users = env.users.taste, env.users.user
    by_hand = ((taste.user_vectors[users] * taste.item_vectors[action]).sum(-1)
               + taste.user_bias[users] + taste.item_bias[action] + taste.global_bias)
    torch.testing.assert_close(out["next", "reward"].squeeze(-1), by_hand.clamp(0, 5))
    torch.testing.assert_close(out["next", "click"], by_hand.clamp(0, 5) >= 4.0)


def test_a_user_leaves_when_a_recommendation_is_too_close_to_a_recent_one(log_file: Path) -> None:
    env = make_env(log_file, num_users=2, history_length=2, boredom_window=3, mask_history=False)
    vectors = env.users.taste.item_vectors
    vectors[:] = torch.arange(vectors.shape[0], dtype=torch.float32)[:, None] * 100.0  # far apart
    vectors[6] = vectors[5] + 1e-3  # items 5 and 6: practically the same
    env.users.boredom_distance = 1.0
    td = env.reset()
    td = env.step(td.set("action", torch.tensor([5, 5])))["next"]
    assert not td["done"].any()
    td = env.step(td.set("action", torch.tensor([6, 9])))["next"]
    assert td["terminated"].squeeze(-1).tolist() == [True, False]  # user 0 saw 5 just before 6


def test_an_item_is_recommended_at_most_once_per_episode(log_file: Path) -> None:
    """mask_scope=episode: items stay masked after leaving the window, until the user resets."""
    env = make_env(log_file, num_users=3, boredom_window=0)
    td = env.reset()
    shown = [set(td["history"][b].tolist()) - {0} for b in range(3)]
    for _ in range(8):  # twice the window: early recommendations have left it
        action = torch.stack([td["action_mask"][b].nonzero()[0, 0] for b in range(3)])
        for b in range(3):
            shown[b].add(action[b].item())
        td = env.step(td.set("action", action))["next"]
        for b in range(3):
            masked = set(torch.nonzero(~td["action_mask"][b]).squeeze(1).tolist())
            assert masked == shown[b] | {0}
    reset = torch.tensor([True, False, False])
    td = env.reset(td.set("_reset", reset[:, None]))
    start = set(td["history"][0].tolist()) - {0}
    assert set(torch.nonzero(~td["action_mask"][0]).squeeze(1).tolist()) == start | {0}
    assert not td["action_mask"][1, list(shown[1])].any()  # users not reset keep their mask


def test_window_scope_masks_only_the_visible_history(log_file: Path) -> None:
    env = make_env(log_file, num_users=2, boredom_window=0, mask_scope="window")
    td = env.reset()
    for _ in range(8):
        action = torch.stack([td["action_mask"][b].nonzero()[0, 0] for b in range(2)])
        td = env.step(td.set("action", action))["next"]
    for b in range(2):
        masked = set(torch.nonzero(~td["action_mask"][b]).squeeze(1).tolist())
        assert masked == set(td["history"][b].tolist()) | {0}


def test_episode_scope_needs_more_items_than_a_session_can_mask(log_file: Path) -> None:
    with pytest.raises(ValueError, match="history_length \\+ max_episode_steps"):
        make_env(log_file, max_episode_steps=30)
    with pytest.raises(ValueError, match="mask_scope must be one of"):
        make_env(log_file, mask_scope="session")


def test_episodes_are_capped(log_file: Path) -> None:
    env = make_env(log_file, num_users=4, boredom_window=0, max_episode_steps=7, mask_history=False)
    rollout = env.rollout(7, break_when_any_done=False)
    assert rollout["next", "truncated"][:, -1].all() and not rollout["next", "done"][:, :-1].any()


def test_training_validation_and_test_users_never_mix(log_file: Path) -> None:
    """Three disjoint user sets from one seeded permutation; training draws its users with
    replacement, session after session, and meets neither evaluation set."""
    split = {"validation_user_fraction": 0.2, "test_user_fraction": 0.3}
    train = make_env(log_file, num_users=256, **split)
    train.reset()
    sequences = train.sequences
    users = {name: set(sequences.users_of(name).tolist())
             for name in ("train", "validation", "test")}
    assert [len(users[name]) for name in ("validation", "test")] == [NUM_USERS // 5,
                                                                     3 * NUM_USERS // 10]
    assert not users["validation"] & users["test"]
    assert users["train"] | users["validation"] | users["test"] == set(range(NUM_USERS))
    assert not users["train"] & (users["validation"] | users["test"])
    assert set(train.users.user.tolist()) == users["train"]  # 256 draws with replacement


@pytest.mark.parametrize("split", ["validation", "test"])
def test_an_evaluation_meets_each_user_of_its_split_once(log_file: Path, split: str) -> None:
    """Asked for more users than the split has, the batch is the split, each user once; asked
    for fewer, a seeded sample without replacement (the same for the same seed)."""
    options = {"validation_user_fraction": 0.2, "test_user_fraction": 0.3, "user_split": split}
    whole = make_env(log_file, num_users=500, **options)
    whole.reset()
    members = whole.sequences.users_of(split)
    assert whole.batch_size[0] == members.numel()
    assert sorted(whole.users.user.tolist()) == members.tolist()  # every user, none twice
    sample = make_env(log_file, num_users=4, **options)
    sample.reset()
    drawn = sample.users.user.tolist()
    assert len(set(drawn)) == 4 and set(drawn) <= set(members.tolist())
    again = make_env(log_file, num_users=4, **options)
    again.reset()
    assert again.users.user.tolist() == drawn
    # An episode that ends and is reset replays the same user in that slot, never another.
    sample.users.reset(torch.ones(4, dtype=torch.bool), sample.rng)
    assert sample.users.user.tolist() == drawn


def test_a_missing_log_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="python -m recrl.data download"):
        LoggedEnv(2, data={"path": str(tmp_path / "nope"), "format": "ml-100k"})


@needs_ml100k
def test_movielens_100k_world(tmp_path: Path) -> None:
    env = LoggedEnv(64, data={"path": str(ML100K), "format": "ml-100k", "cache_dir": str(tmp_path)},
                    seed=0, fit_epochs=100)
    check_env_specs(env)
    sequences = env.sequences
    assert sequences.num_users == 943  # every ML-100K user has >= 20 ratings: none dropped
    assert env.num_items == sequences.num_items and PADDING == 0
    assert len(list(tmp_path.glob("ml-100k-taste-*.pt"))) == 1  # the fit is cached


def test_logs_without_ratings_get_a_logistic_taste_model_fitted_in_minibatches(
    log_file: Path,
) -> None:
    """Implicit feedback: observed pairs must come out well above unobserved ones (0-5 scale)."""
    env = make_env(log_file, columns={"rating": None}, fit_epochs=20, fit_batch_size=64)
    sequences, taste = env.sequences, env.users.taste
    assert sequences.ratings is None and taste.logistic
    users = torch.repeat_interleave(torch.arange(sequences.num_users), sequences.lengths)
    observed = taste.ratings(users, sequences.items)
    seen = torch.zeros(sequences.num_users, sequences.num_items + 1, dtype=torch.bool)
    seen[users, sequences.items] = True
    all_ratings = taste.ratings(torch.arange(sequences.num_users))  # [U, N+1]
    unobserved = all_ratings[:, 1:][~seen[:, 1:]]
    assert observed.min() >= 0 and all_ratings.max() <= 5
    assert observed.mean() > unobserved.mean() + 1.5


def test_a_table_with_its_own_column_names_through_the_data_config(
        log_file: Path, tmp_path: Path) -> None:
    """What the documented `env=logged data.path=... data.format=table data.columns.rating=stars`
    composes: the renamed columns reach the table reader (ratings included)."""
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(log_file.read_text().replace("user,item,timestamp,rating",
                                                    "uid,sku,ts,stars", 1))
    cfg = compose_config(
        "env=logged", f"data.path={renamed}", "data.format=table", "data.columns.user=uid",
        "data.columns.item=sku", "data.columns.timestamp=ts", "data.columns.rating=stars",
        "data.min_item_interactions=1", f"data.cache_dir={tmp_path / 'cache'}",
        "env.fit_epochs=20", "env.history_length=4", "env.max_episode_steps=20")
    env = instantiate(cfg.env, num_users=4, seed=0)
    reference = make_env(log_file, num_users=4, fit_epochs=20)
    assert torch.equal(env.sequences.items, reference.sequences.items)
    assert torch.equal(env.sequences.ratings, reference.sequences.ratings)
    assert env.sequences.ratings.unique().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


@needs_ml100k
def test_a_run_on_logged_data_evaluates_each_test_user_once(tmp_path: Path) -> None:
    """Through the CLI: the final evaluation plays every one of ML-100K's 47 test users once (500
    asked for), the agent and every baseline on the same users, and says so; validation meets
    other users of the log."""
    run_dir = tmp_path / "run"
    message = run_recrl_in_process(run_dir, "env=ml100k", *ml100k_data(tmp_path / "cache"),
                                   "debug=smoke", "evaluation.final_num_users=500")
    assert message is None
    results = read_results(run_dir)
    assert results["users"] == {"train": 849, "validation": 47, "test": 47}
    # What was read, kept and decided about the log travels with the results.
    assert results["data"]["split"] == {"training_users": 849, "validation_users": 47,
                                        "test_users": 47}
    assert results["data"]["steps"][-1]["interactions"] == 99_287
    assert results["agent"]["num_users"] == 47
    assert all(b["num_users"] == 47 for b in results["baselines"].values())
    assert "47 of the log's 47 test users" in results["evaluation_protocol"]
    assert "CI over distinct users" in results["evaluation_protocol"]
    returns = json.loads((run_dir / "test_returns.json").read_text())["returns"]
    assert {len(r) for r in returns.values()} == {47}
# -- logs recrl has never seen, through the CLI's config and entry point --------------------------
def new_users_log(path: Path, fmt: str = "csv") -> pd.DataFrame:
    """A log as a new user brings it: text ids, ISO times, columns of its own (uid, sku, ts,
    stars), rows out of time order, one blank rating and one row logged twice. Written to
    ``path`` as ``fmt`` (csv, tsv, csv without header, parquet with real datetimes)."""
    users = np.repeat(np.arange(NUM_USERS), PER_USER)
    k = np.tile(np.arange(PER_USER), NUM_USERS)
    times = pd.Timestamp("2024-01-01") + pd.to_timedelta(users * 100 + k, unit="h")
    frame = pd.DataFrame({"uid": "user-" + pd.Series(users).astype(str).str.zfill(2),
                          "sku": "sku-" + pd.Series((users + 3 * k) % NUM_ITEMS + 1).astype(str)
                          .str.zfill(2),
                          "ts": times.strftime("%Y-%m-%dT%H:%M:%S"),
                          "stars": (1 + (users + k) % 5).astype(float)})
    frame = frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # not in time order
    frame.loc[0, "stars"] = np.nan  # one blank rating
    frame = pd.concat([frame, frame.iloc[[1]]], ignore_index=True)  # one row logged twice
    if fmt == "parquet":
        frame.assign(ts=pd.to_datetime(frame["ts"])).to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if fmt == "tsv" else ",", index=False,
                     header=fmt != "headerless")
    return frame


NAMED = ["data.columns.user=uid", "data.columns.item=sku", "data.columns.timestamp=ts",
         "data.columns.rating=stars"]


def cli_env(tmp_path: Path, *overrides: str) -> LoggedEnv:
    """The env ``python -m recrl.run env=logged data.format=table <overrides>`` builds."""
    cfg = compose_config(
        "env=logged", "data.format=table", "data.min_item_interactions=1",
        f"data.cache_dir={tmp_path / 'cache'}", "env.fit_epochs=5", "env.history_length=4",
        "env.max_episode_steps=10", *overrides)
    return instantiate(cfg.env, num_users=4, seed=0)


def test_a_new_users_log_gets_in_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    frame = new_users_log(path)
    env = cli_env(tmp_path, f"data.path={path}", *NAMED)
    sequences, summary = env.sequences, env.sequences.summary
    assert sequences.user_ids[:2].tolist() == ["user-00", "user-01"]
    kept = frame.dropna(subset=["stars"]).drop_duplicates(["uid", "sku", "ts"], keep="last")
    first = kept[kept["uid"] == "user-00"].sort_values("ts")
    assert sequences.item_ids[sequences.user_sequence(0).numpy()].tolist() == first["sku"].tolist()
    assert sequences.ratings is not None  # one blank rating never drops the others
    assert summary["ratings"]["blank"] == 1 and summary["duplicates"]["found"] == 1
    assert summary["read"]["timestamps"] == "datetime"
    assert [s["interactions"] for s in summary["steps"]][:3] == [len(frame), len(frame) - 1,
                                                                  len(frame) - 2]
    assert set(summary["taste_model"]) >= {"click_share", "final_loss", "batch_size"}
    assert summary["taste_model"]["batch_size"] is None  # a small log: full batch


@pytest.mark.parametrize(("name", "fmt", "overrides"), [
    ("log.tsv", "tsv", NAMED),  # the separator from the suffix
    ("log.txt", "tsv", [*NAMED, "data.sep=tab"]),  # named
    ("log.csv", "headerless", ["data.header=false", "data.columns.user=0", "data.columns.item=1",
                               "data.columns.timestamp=2", "data.columns.rating=3"]),
    ("log.parquet", "parquet", NAMED),  # datetimes
])
def test_every_form_of_the_same_log_gives_the_same_sequences(
        tmp_path: Path, name: str, fmt: str, overrides: list[str]) -> None:
    reference = tmp_path / "reference.csv"
    new_users_log(reference)
    path = tmp_path / name
    new_users_log(path, fmt)
    env = cli_env(tmp_path, f"data.path={path}", *overrides)
    expected = cli_env(tmp_path, f"data.path={reference}", *NAMED).sequences
    assert torch.equal(env.sequences.items, expected.items)
    assert torch.equal(env.sequences.ratings, expected.ratings)
    assert env.sequences.user_ids.tolist() == expected.user_ids.tolist()


def test_a_log_without_a_timestamp_column_is_in_file_order(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(log_file_text(timestamps=False))
    env = cli_env(tmp_path, f"data.path={path}")  # no data.columns.timestamp=null needed
    sequences = env.sequences
    assert sequences.summary["read"]["timestamps"] == "file order"
    first = sequences.item_ids[sequences.user_sequence(0).numpy()].tolist()
    assert first == [7 * k % NUM_ITEMS + 1 for k in range(PER_USER)]


def test_rating_scale_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text(log_file_text(top=10))  # ratings 1-10
    env = cli_env(tmp_path, f"data.path={path}", "data.rating_scale=[0,10]")
    assert env.sequences.ratings.max().item() == 5.0
    assert env.sequences.summary["ratings"]["rating_scale"] == [0.0, 10.0]


@needs_ml100k
def test_movielens_path_may_name_a_file_in_its_folder(tmp_path: Path) -> None:
    cfg = compose_config("env=ml100k", f"data.path={ML100K / 'u.data'}",
                         f"data.cache_dir={tmp_path}", "env.fit_epochs=5")
    env = instantiate(cfg.env, num_users=2, seed=0)
    assert env.sequences.num_users == 943 and env.sequences.summary["path"] == str(ML100K)


def log_file_text(timestamps: bool = True, top: int = 5, rating: int | None = None) -> str:
    """A log like ``log_file``'s as text: ratings ``1 + (u + k) % top`` (or all ``rating``).
    Without timestamps, user u's items in file order are ``(u + 7k) % 30 + 1``."""
    rows = [(u, k, rating or 1 + (u + k) % top) for u in range(NUM_USERS) for k in range(PER_USER)]
    if timestamps:
        return "user,item,timestamp,rating\n" + "".join(
            f"{u},{(u + 3 * k) % NUM_ITEMS + 1},{k},{r}\n" for u, k, r in rows)
    return "user,item,rating\n" + "".join(
        f"{u},{(u + 7 * k) % NUM_ITEMS + 1},{r}\n" for u, k, r in rows)


# Bad logs through the run's entry point: (what the file holds, overrides, the message's phrase).
BAD_LOGS = [
    ("uid,item,ts\n1,2,3\n", [], "log.csv: column 'user' not found (columns: uid, item, ts): "
     "set data.columns.user=<name>"),
    ("user,item,rating\n1,2,-1\n1,3,4\n", [], "negative ratings (they range from -1 to 4"),
    ("user,item,rating\n1,2,10\n1,3,4\n", [], "set data.rating_scale=[min, max] to map them"),
    ("user,item,rating\n1,2,10\n", ["data.rating_scale=[1,5]"],
     "outside data.rating_scale=[1, 5]: set data.rating_scale to the log's scale"),
    ("user,item,rating\n1,2,\n1,3,4\n", ["data.blank_ratings=refuse"],
     "1 blank rating(s), the first on data row 1: fill them in, or set data.blank_ratings=drop"),
    ("user,item,timestamp\n1,2,5\n1,2,5\n", ["data.duplicates=refuse"],
     "set data.duplicates=keep_last"),
    ("user,item\n1,2\n", ["data.header=false"], "data.header=false, so columns are positions: "
     "set data.columns.user=<0..1>"),
    ("user;item\n1;2\n", [], "set data.sep=semicolon"),
    ("user,item,timestamp\n1,2,yesterday\n", [], "must hold numbers or ISO 8601 date-times, got "
     "'yesterday' on data row 1"),
    ("user,item\n1,2\n", ["data.duplicates=maybe"], "data.duplicates='maybe' is not one of"),
    (None, [], "data.format=table reads one file: set data.path=<folder>/<file>"),
]


@pytest.mark.parametrize(("content", "overrides", "expected"), BAD_LOGS)
def test_a_bad_log_ends_with_one_line_naming_the_setting(
        tmp_path: Path, content: str | None, overrides: list[str], expected: str) -> None:
    """Through ``recrl.run.main`` as the CLI composes it: one ``recrl: configuration error``
    line, FAILED, no results, and nothing half-written in the cache."""
    path = tmp_path / "logs"
    path.mkdir()
    if content is not None:
        path = path / "log.csv"
        path.write_text(content)
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    message = run_recrl_in_process(run_dir, "debug=smoke", "env=logged", f"data.path={path}",
                                   "data.format=table", f"data.cache_dir={cache}", *overrides)
    assert message is not None and message.startswith("recrl: configuration error:"), message
    assert expected in message and "\n" not in message
    assert (run_dir / "FAILED").is_file() and not (run_dir / "results.json").exists()
    assert not cache.exists() or not any(cache.iterdir())


# -- the taste model's fit: batch by log size, progress, a degenerate world flagged ----------------
def test_fit_batch_size_is_picked_by_log_size() -> None:
    assert fit_batch_size(None, FULL_BATCH_MAX_INTERACTIONS) is None  # ML-100K: full batch
    assert fit_batch_size(None, FULL_BATCH_MAX_INTERACTIONS + 1) == DEFAULT_MINIBATCH
    assert fit_batch_size(64, 10**7) == 64  # a given size is kept


def test_the_fit_logs_progress_and_flags_a_degenerate_world(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "ones.csv"
    path.write_text(log_file_text(rating=1))
    with caplog.at_level(logging.INFO, logger="recrl"):
        env = cli_env(tmp_path, f"data.path={path}")  # everyone rates everything 1
    taste = env.sequences.summary["taste_model"]
    assert taste["click_share"] == 0.0 and taste["degenerate"]
    assert "taste model: epoch 5/5, loss" in caplog.text
    assert any(r.levelno == logging.WARNING and "looks degenerate" in r.message
               for r in caplog.records)
    assert any("looks degenerate" in w for w in env.sequences.summary["warnings"])


# -- as a user runs it ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.e2e
def test_a_new_users_log_runs_end_to_end_and_run_log_holds_the_summary(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    new_users_log(path)
    run_dir = tmp_path / "run"
    proc = run_recrl(run_dir, "debug=smoke", "env=logged", f"data.path={path}", "data.format=table",
                     *NAMED, "data.min_item_interactions=1", f"data.cache_dir={tmp_path / 'cache'}",
                     "env.fit_epochs=20", "env.history_length=4", "env.max_episode_steps=10",
                     "evaluation.ranking.num_negatives=10", "trainer.enable_progress_bar=false",
                     timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "results.json").is_file()
    run_log = (run_dir / "run.log").read_text()
    for line in ("data summary:", "blank ratings: 1 (data.blank_ratings=drop)",
                 "duplicate rows (same user, item, time): 1", "taste model: epoch 20/20",
                 "1 row(s) with a blank rating dropped", "GPU available"):
        assert line in run_log, line


@pytest.mark.slow
@pytest.mark.e2e
def test_a_missing_column_ends_a_real_run_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,ts,stars\n1,2,3,4\n")
    proc = run_recrl(tmp_path / "run", "env=logged", f"data.path={path}", "data.format=table",
                     timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"recrl: configuration error: {path}: columns 'user', 'item' not found (columns: uid, "
        "sku, ts, stars): set data.columns.user=<name> and data.columns.item=<name>")


def test_too_many_sampled_negatives_for_a_small_catalogue_are_refused_before_training(
        tmp_path: Path) -> None:
    """30 items, each user saw 10 of them ((u + 3k) % 30 repeats after k = 10): 100 sampled
    negatives cannot be drawn, 20 can. Said at start-up, with
    the number that fits, instead of after training."""
    path = tmp_path / "log.csv"
    path.write_text(log_file_text())
    run_dir = tmp_path / "run"
    message = run_recrl_in_process(run_dir, "debug=smoke", "env=logged", f"data.path={path}",
                                   "data.format=table", "data.min_item_interactions=1",
                                   f"data.cache_dir={tmp_path / 'cache'}", "env.history_length=4",
                                   "env.max_episode_steps=10", "env.fit_epochs=5")
    assert message == ("recrl: configuration error: evaluation.ranking.num_negatives=100, but a "
                       "user of this log has only 20 items they have not interacted with: set "
                       "evaluation.ranking.num_negatives=20 or fewer")
    assert not (run_dir / "results.json").exists() and (run_dir / "FAILED").is_file()


class TableTaste:
    """A taste model whose every user rates item i ``table[i]`` (for the cascade's tests)."""

    def __init__(self, table: list[float]) -> None:
        self.table = torch.tensor(table)

    def ratings(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        if items is None:
            return self.table.expand(users.shape[0], -1)
        return self.table[items]


def test_slates_follow_the_cascade_with_position_based_examination(log_file: Path) -> None:
    """Ratings 3, 4.5, 5 in that order: the first item is not liked, the second is examined
    with probability 0.8 (then clicked), and the third is never reached unless the second is
    (the examined positions are a prefix): P(click at 1) = 0.8, P(no click) = 0.2."""
    env = make_env(log_file, num_users=4000, boredom_window=0, slate_size=3,
                   examination_decay=0.8)
    env.reset()
    env.users.taste = TableTaste([0.0] + [3.0, 4.5, 5.0] + [1.0] * (NUM_ITEMS - 3))
    response = env.users.respond_slate(torch.tensor([1, 2, 3]).expand(4000, 3), env.rng)
    shares = [(response.position == p).float().mean().item() for p in (0, 1, 2, -1)]
    assert shares[0] == 0.0 and shares[2] == 0.0
    assert shares[1] == pytest.approx(0.8, abs=0.02) and shares[3] == pytest.approx(0.2, abs=0.02)
    # The reward is the clicked item's rating, 0 without a click.
    assert torch.equal(response.watch_time, torch.where(response.position == 1, 4.5, 0.0))
    # A liked first item is always clicked: position 0 is always examined.
    first = env.users.respond_slate(torch.tensor([3, 2, 1]).expand(4000, 3), env.rng)
    assert (first.position == 0).all()


def test_a_slate_env_on_logged_data_steps_and_masks_every_shown_item(log_file: Path) -> None:
    env = make_env(log_file, num_users=6, slate_size=2, history_length=4, max_episode_steps=5)
    check_env_specs(env)
    td = env.reset()
    shown = [set(td["history"][b].tolist()) - {0} for b in range(6)]
    for _ in range(3):
        td["action"] = torch.stack([td["action_mask"][b].nonzero()[:2, 0] for b in range(6)])
        for b in range(6):
            shown[b] |= set(td["action"][b].tolist())
        td = env.step(td)["next"]
        for b in range(6):  # mask_scope=episode: every item shown this session stays masked
            assert not td["action_mask"][b, sorted(shown[b])].any()
