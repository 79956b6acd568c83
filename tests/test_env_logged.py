"""The logged-data simulator: real start histories, taste-model rewards, boredom, splits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from recrl.envs import LoggedEnv
from recrl.observation import CLICKED, PADDING
from tests.conftest import ML100K, compose_config, needs_ml100k

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
             "holdout_user_fraction", "split_seed", "cache_dir"}


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


def test_training_and_heldout_users_never_mix(log_file: Path) -> None:
    train = make_env(log_file, num_users=256, holdout_user_fraction=0.25)
    heldout = make_env(log_file, num_users=256, holdout_user_fraction=0.25, user_split="heldout")
    train.reset()
    heldout.reset()
    held = set(torch.nonzero(train.sequences.heldout_users).squeeze(1).tolist())
    assert len(held) == NUM_USERS // 4
    assert set(heldout.users.user.tolist()) == held  # 256 draws cover all 10
    assert not set(train.users.user.tolist()) & held


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
    from hydra.utils import instantiate

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
