"""EasyRL4Rec's ML-1M environment rebuilt from ratings.dat: a small hand-made fixture (ML-1M
itself is not on the test machine; `python -m recrl.data download ml-1m` gets it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from recrl.envs import ML1MEasyRLEnv
from recrl.envs.ml1m_easyrl import distance_quantile, load_ml1m_world
from tests.conftest import compose_config


def write_ml1m(folder: Path, num_users: int = 30, num_items: int = 12) -> Path:
    """ratings.dat (``user::movie::rating::time``) where every user rated every movie: rating
    1 + (user + 2 movie) mod 5; movies.dat with two genres, the first one listed counting."""
    folder.mkdir(parents=True)
    lines = [f"{u}::{10 * i}::{1 + (u + 2 * i) % 5}::{1000 + u * 100 + i}"
             for u in range(1, num_users + 1) for i in range(1, num_items + 1)]
    (folder / "ratings.dat").write_text("\n".join(lines) + "\n", encoding="latin-1")
    movies = [f"{10 * i}::Movie {i} (2000)::{'Comedy|Drama' if i % 2 else 'Action'}"
              for i in range(1, num_items + 1)]
    (folder / "movies.dat").write_text("\n".join(movies) + "\n", encoding="latin-1")
    return folder


def test_both_worlds_come_from_disjoint_shares_of_the_ratings(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    world = load_ml1m_world(str(folder), true_fraction=0.9, split_seed=42)
    assert tuple(world.true_ratings.shape) == (30, 12)  # movie ids 10..120 -> items 1..12
    assert world.true_ratings.min() >= 0 and world.true_ratings.max() <= 5
    logged = world.logged_ratings > 0
    # The training world's log is ~10% of the 360 ratings; the true world fitted on the rest.
    assert 15 <= int(logged.sum()) <= 60
    assert world.logged_popularity.sum().item() == logged.sum().item()
    # First listed genre: odd movies "Comedy|Drama" -> Comedy, even ones Action (ids sorted).
    assert world.item_categories.tolist() == [2 if i % 2 else 1 for i in range(1, 13)]
    # Another split seed, another split.
    other = load_ml1m_world(str(folder), true_fraction=0.9, split_seed=7)
    assert not torch.equal(other.logged_ratings, world.logged_ratings)


def test_the_quit_threshold_is_a_quantile_of_item_distances_unless_given(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    env = ML1MEasyRLEnv(4, path=str(folder), user_split="test", leave_quantile=0.3)
    distance = load_ml1m_world(str(folder)).distance
    assert env._leave[0] == pytest.approx(distance_quantile(distance, 0.3))
    pairs = distance[torch.triu_indices(12, 12, offset=1).unbind()]
    assert (pairs < env._leave[0]).double().mean().item() == pytest.approx(0.3, abs=0.05)
    fixed = ML1MEasyRLEnv(4, path=str(folder), user_split="test", leave_threshold=75.0)
    assert fixed._leave[0] == 75.0
    with pytest.raises(ValueError, match="env.leave_quantile must be in"):
        ML1MEasyRLEnv(4, path=str(folder), leave_quantile=1.5)


def test_test_users_meet_the_true_world_and_repeats_quit(tmp_path: Path) -> None:
    folder = write_ml1m(tmp_path / "ml-1m")
    world = load_ml1m_world(str(folder))
    env = ML1MEasyRLEnv(8, path=str(folder), user_split="test", seed=0)
    td = env.reset()
    td["action"] = torch.full((8,), 3)
    out = env.step(td)["next"]
    assert torch.equal(out["reward"].squeeze(-1), world.true_ratings[env.users.user, 2])
    td = out
    td["action"] = torch.full((8,), 3)
    assert env.step(td)["next", "terminated"].all()


def test_env_ml1m_easyrl_composes() -> None:
    cfg = compose_config("env=ml1m_easyrl", "algo=dqn")
    assert cfg.env._target_ == "recrl.envs.ML1MEasyRLEnv"
    assert (cfg.env.leave_quantile, cfg.env.leave_window, cfg.env.max_episode_steps) == (0.3, 7, 30)
    assert cfg.algo.repeat_bias is True
