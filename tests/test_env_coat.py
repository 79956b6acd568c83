"""EasyRL4Rec's Coat environment: the quit rule and rewards against a hand-made world, the learnt
training world, bad files, the download, and the real matrix where it is present."""

from __future__ import annotations

import hashlib
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recrl.data import download as download_module
from recrl.data.download import DownloadError, download
from recrl.envs import CoatEnv
from recrl.envs.coat import CoatDataError, fit_rating_model, load_coat_world, quit_distances
from tests.conftest import DATA_DIR, compose_config

COAT = DATA_DIR / "coat"
PSEUDO_GT = COAT / "coat_pseudoGT_ratingM.ascii"
needs_pseudo_gt = pytest.mark.skipif(
    not PSEUDO_GT.is_file(),
    reason=f"RL4Rec's pseudo-ground-truth Coat matrix not found at {PSEUDO_GT} (get it with "
           f"`python -m recrl.data download coat --dest <folder>` and set RECRL_TEST_DATA)",
)

# A hand-made world: 2 users x 4 items. Item columns (user 0, user 1):
# item 1 = (5, 1), item 2 = (1, 5), item 3 = (3, 2), item 4 = (2, 4).
TRUE = np.array([[5, 1, 3, 2], [1, 5, 2, 4]])
# Distances between columns, by hand: d(1,2) = sqrt(16 + 16) = 5.657, d(1,3) = sqrt(4 + 1) = 2.236,
# d(1,4) = sqrt(9 + 9) = 4.243, d(2,3) = sqrt(4 + 9) = 3.606, d(2,4) = sqrt(1 + 1) = 1.414,
# d(3,4) = sqrt(1 + 4) = 2.236. With threshold 2 only items 2 and 4 are "close" (and repeats).
HAND_DISTANCES = {(1, 2): 32 ** 0.5, (1, 3): 5 ** 0.5, (1, 4): 18 ** 0.5, (2, 3): 13 ** 0.5,
                  (2, 4): 2 ** 0.5, (3, 4): 5 ** 0.5}
LOGGED = np.array([[5, 0, 3, 0], [0, 5, 0, 4]])
PROPENSITIES = np.array([[0.5, 0.1, 0.5, 0.1], [0.1, 0.5, 0.1, 0.5]])


def write_world(folder: Path, true: np.ndarray = TRUE) -> Path:
    """Coat's file layout holding the hand-made world (one-hot item features: 2 jacket types)."""
    (folder / "user_item_features").mkdir(parents=True)
    np.savetxt(folder / "coat_pseudoGT_ratingM.ascii", true, fmt="%d")
    np.savetxt(folder / "train.ascii", LOGGED, fmt="%d")
    np.savetxt(folder / "propensities.ascii", PROPENSITIES, fmt="%.3f")
    features = np.zeros((TRUE.shape[1], 33), dtype=int)
    features[:, 0] = 1  # gender
    features[[0, 2], 2] = 1  # jacket type 1: items 1 and 3
    features[[1, 3], 3] = 1  # jacket type 2: items 2 and 4
    np.savetxt(folder / "user_item_features" / "item_features.ascii", features, fmt="%d")
    return folder


def hand_env(tmp_path: Path, num_users: int = 6, **kwargs) -> CoatEnv:
    options = dict(user_split="test", leave_threshold=2.0, leave_window=2, history_length=3,
                   max_episode_steps=30, seed=0)
    return CoatEnv(num_users, path=str(write_world(tmp_path / "coat")), **{**options, **kwargs})


def play(env: CoatEnv, actions: list[int]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Every user gets the same items; returns each step's reward [B] and done [B]."""
    td = env.reset()
    rewards, dones = [], []
    for item in actions:
        td["action"] = torch.full((env.batch_size[0],), item)
        out = env.step(td)["next"]
        rewards.append(out["reward"].squeeze(-1))
        dones.append(out["terminated"].squeeze(-1))
        td = out
    return rewards, dones


def test_item_distances_are_those_of_the_hand_computed_columns() -> None:
    distance = quit_distances(torch.tensor(TRUE, dtype=torch.float32))
    for (a, b), expected in HAND_DISTANCES.items():
        assert distance[a - 1, b - 1].item() == pytest.approx(expected, rel=1e-6)
        assert distance[b - 1, a - 1].item() == pytest.approx(expected, rel=1e-6)
    assert torch.diagonal(distance).abs().max().item() == 0.0


def test_rewards_are_the_true_matrix_and_the_quitting_turn_still_pays(tmp_path: Path) -> None:
    env = hand_env(tmp_path)
    rewards, dones = play(env, [1, 3, 2, 4])
    users = env.users.user
    true = torch.tensor(TRUE, dtype=torch.float32)
    for step, item in enumerate([1, 3, 2, 4]):
        assert torch.equal(rewards[step], true[users, item - 1])
    # Item 4 lies within 2 of item 2, shown the turn before (window 2): the user leaves after it,
    # and its rating is earned. Items 1, 3, 2 are >= 2.236 apart: nobody left before.
    assert [bool(d.all()) for d in dones] == [False, False, False, True]
    assert [bool(d.any()) for d in dones[:3]] == [False, False, False]


def test_a_repeat_inside_the_window_quits_and_outside_it_does_not(tmp_path: Path) -> None:
    env = hand_env(tmp_path)
    # 1, 3, 2, 1: item 1 is 3 turns back, outside the window of 2 -> stays; then 1 again quits.
    _, dones = play(env, [1, 3, 2, 1, 1])
    assert [bool(d.any()) for d in dones] == [False, False, False, False, True]
    assert bool(dones[-1].all())


def test_the_first_turn_never_quits_whatever_the_initial_item(tmp_path: Path) -> None:
    env = hand_env(tmp_path, num_users=64)
    td = env.reset()
    start = td["history"][:, -1]
    assert set(start.tolist()) == {1, 2, 3, 4}  # random initial items, one per user
    assert (td["history"][:, :-1] == 0).all()
    # Recommending the initial item itself does not quit: it is not a recommendation.
    td["action"] = start
    assert not env.step(td)["next", "terminated"].any()


def test_sessions_end_after_thirty_turns(tmp_path: Path) -> None:
    env = hand_env(tmp_path, max_episode_steps=30, leave_threshold=0.0)  # nobody ever quits
    td = env.reset()
    for turn in range(30):
        td["action"] = torch.full((env.batch_size[0],), 1 + turn % 4)
        out = env.step(td)["next"]
        assert bool(out["truncated"].all()) == (turn == 29)
        assert not out["terminated"].any()
        td = out


def test_training_users_meet_the_learnt_world_and_test_users_the_true_one(tmp_path: Path) -> None:
    folder = write_world(tmp_path / "coat")
    world = load_coat_world(str(folder))
    train = CoatEnv(4, path=str(folder), user_split="train")
    validation = CoatEnv(4, path=str(folder), user_split="validation")
    test = CoatEnv(4, path=str(folder), user_split="test")
    assert torch.equal(train.users.rewards[:, 1:], world.learnt_ratings)
    assert torch.equal(validation.users.rewards[:, 1:], world.learnt_ratings)
    assert torch.equal(test.users.rewards[:, 1:], torch.tensor(TRUE, dtype=torch.float32))
    # Predictions stay in the logged ratings' range (3-5), so the learnt world is not the true one.
    assert world.learnt_ratings.min() >= 3 and world.learnt_ratings.max() <= 5
    assert not torch.equal(world.learnt_ratings, torch.tensor(TRUE, dtype=torch.float32))
    true_train = CoatEnv(4, path=str(folder), user_split="train", train_reward="truth")
    assert torch.equal(true_train.users.rewards[:, 1:], torch.tensor(TRUE, dtype=torch.float32))
    # The quit rule is the true world's in both.
    assert torch.equal(train.users.distance, test.users.distance)
    assert train.item_categories.tolist() == [0, 1, 2, 1, 2]


def test_the_rating_model_fits_the_logged_ratings_it_is_given() -> None:
    """Without shrinkage, the factorisation reproduces every observed rating; IPS weights change
    the fit only through which observed errors count more."""
    logged = torch.tensor(LOGGED, dtype=torch.float32)
    for propensities in (None, torch.tensor(PROPENSITIES, dtype=torch.float32)):
        fitted = fit_rating_model(logged, propensities, dim=4, weight_decay=0.0, epochs=500)
        observed = logged > 0
        assert (fitted[observed] - logged[observed]).abs().max().item() < 0.05


def test_mask_history_hides_the_window_from_every_policy(tmp_path: Path) -> None:
    env = hand_env(tmp_path, mask_history=True)
    td = env.reset()
    start = td["history"][:, -1]
    assert not td["action_mask"].gather(1, start[:, None]).any()
    free = hand_env(tmp_path / "free", mask_history=False)
    assert free.reset()["action_mask"][:, 1:].all()


@pytest.mark.parametrize(("name", "content", "match"), [
    ("coat_pseudoGT_ratingM.ascii", None, "not found .*python -m recrl.data download coat"),
    ("train.ascii", "1 2\n3 4\n", "expected a 2 x 4 matrix"),
    ("train.ascii", "5 0 x 0\n0 5 0 4\n", "not a whitespace-separated numeric matrix"),
    ("train.ascii", "5 0 7 0\n0 5 0 4\n", "ratings must be 0 \\(none\\) or 1-5"),
    ("propensities.ascii", "0.5 0 0.5 0.1\n0.1 0.5 0.1 0.5\n", "must lie in \\(0, 1\\]"),
])
def test_bad_coat_files_name_the_file_and_the_fix(tmp_path: Path, name: str,
                                                  content: str | None, match: str) -> None:
    folder = write_world(tmp_path / "coat")
    if content is None:
        (folder / name).unlink()
    else:
        (folder / name).write_text(content)
    with pytest.raises(CoatDataError, match=match):
        CoatEnv(2, path=str(folder))


def test_unknown_training_world_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="env.train_reward must be one of"):
        hand_env(tmp_path, train_reward="deepfm")


def test_env_coat_composes_with_the_protocol_values() -> None:
    cfg = compose_config("env=coat", "algo=ppo")
    assert cfg.env._target_ == "recrl.envs.CoatEnv"
    assert (cfg.env.leave_threshold, cfg.env.leave_window, cfg.env.max_episode_steps) == (6.0, 7, 30)
    assert cfg.env.mask_history is False


@needs_pseudo_gt
def test_the_real_matrix_matches_hand_checked_values() -> None:
    world = load_coat_world(str(COAT))
    true = world.true_ratings
    assert tuple(true.shape) == (290, 300)
    assert true[0, :6].tolist() == [3, 3, 3, 4, 3, 3]  # the file's first line
    assert true.sum().item() == 194335
    # Items 1 and 2 differ by 247 in squared rating over the 290 users: distance sqrt(247).
    assert world.distance[0, 1].item() == pytest.approx(math.sqrt(247), rel=1e-6)


def test_coat_download_verifies_every_file(tmp_path: Path, monkeypatch) -> None:
    """coat.zip and the pseudo-ground-truth served locally; MD5s pinned for these files."""
    import http.server
    import threading
    from functools import partial

    served = tmp_path / "served"
    source = write_world(tmp_path / "src")
    (source / "test.ascii").write_text("0 0 0 0\n0 0 0 0\n")
    served.mkdir()
    with zipfile.ZipFile(served / "coat.zip", "w") as zf:
        for path in sorted(source.rglob("*")):
            if path.is_file() and path.name != "coat_pseudoGT_ratingM.ascii":
                zf.write(path, f"coat/{path.relative_to(source)}")
    (served / "coat_pseudoGT_ratingM.ascii").write_bytes(
        (source / "coat_pseudoGT_ratingM.ascii").read_bytes())
    pinned = {name: hashlib.md5((source / name).read_bytes()).hexdigest()
              for name in ("train.ascii", "test.ascii", "propensities.ascii",
                           "coat_pseudoGT_ratingM.ascii")}
    monkeypatch.setattr(download_module, "COAT_MD5", pinned)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        folder = download("coat", tmp_path / "data", base_url=url)
        assert folder == tmp_path / "data" / "coat"
        assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["coat"]
        assert CoatEnv(2, path=str(folder), user_split="test").users.rewards.shape == (2, 5)
        # A changed file is refused and leaves nothing behind.
        monkeypatch.setitem(pinned, "train.ascii", "0" * 32)
        with pytest.raises(DownloadError, match="coat/train.ascii has MD5"):
            download("coat", tmp_path / "again", base_url=url)
        assert list((tmp_path / "again").iterdir()) == []
    finally:
        server.shutdown()


def test_the_log_replays_as_transitions_under_the_true_quit_rule(tmp_path: Path) -> None:
    """User 0 rated items 1 and 3 (5, 3); user 1 items 2 and 4 (5, 4), which lie 1.414 apart:
    user 1 leaves after item 4. Each user's last logged item ends their log (truncated)."""
    env = hand_env(tmp_path)
    t = env.logged_transitions(seed=0)
    assert t.shape == (4,)
    assert t["action"].tolist() == [1, 3, 2, 4]
    assert t["next", "reward"].squeeze(-1).tolist() == [5.0, 3.0, 5.0, 4.0]
    assert t["next", "terminated"].squeeze(-1).tolist() == [False, False, False, True]
    assert t["next", "truncated"].squeeze(-1).tolist() == [False, True, False, True]
    # The second transition of a session sees the first one's item and its rating.
    assert t["history"][1, -1].item() == 1 and t["history_watch_time"][1, -1].item() == 5.0
    assert torch.equal(t["next", "history"][0], t["history"][1])


def test_the_ceiling_bench_builds_quit_free_greedy_lists_by_hand() -> None:
    """bench/coat_ceiling.py on the hand-made world (threshold 2, window 2, 3 turns).
    User 0 (5, 1, 3, 2): item 1 (5), item 3 (3), item 4 (2) = 10. User 1 (1, 5, 2, 4): item 2 (5);
    item 4 is within 1.414 of item 2, so item 3 (2); then item 1 (1) = 8."""
    from tests.conftest import load_bench

    bench = load_bench("coat_ceiling")
    truth = torch.tensor(TRUE, dtype=torch.float32)
    picks = bench.greedy_lists(truth, quit_distances(truth), threshold=2.0, window=2, turns=3)
    assert picks.tolist() == [[0, 2, 3], [1, 2, 0]]
    assert bench.true_return(truth, picks).tolist() == [10.0, 8.0]
    same = bench.greedy_lists(truth.mean(0, keepdim=True), quit_distances(truth), 2.0, 2, 3)
    assert bench.true_return(truth, same).shape == (2,)


def test_the_easyrl4rec_table_puts_seed_means_beside_the_published_rows(tmp_path: Path,
                                                                       capsys) -> None:
    """Three seeds of 80, 82, 84 (length 30): mean 82, t(2) = 4.303 x sd 2 / sqrt(3) = 4.97."""
    import json

    from tests.conftest import load_bench

    bench = load_bench("easyrl4rec_table")
    baseline = {"return_mean": 25.0, "return_ci95": 1.0, "episode_length": 10.0}
    for seed, value in enumerate((80.0, 82.0, 84.0)):
        job = tmp_path / "sweep" / str(seed)
        job.mkdir(parents=True)
        (job / "results.json").write_text(json.dumps({
            "seed": seed, "agent": {"return_mean": value, "episode_length": 30.0},
            "baselines": {"random": baseline}}))
    bench.main([f"PPO={tmp_path / 'sweep'}"])
    out = capsys.readouterr().out
    assert "| EasyRL4Rec A2C (model-free) | 81.80 | 29.92 | 2.73 |" in out
    assert "| recrl PPO | **82.00 ± 4.97** (3 seeds: 80.0, 82.0, 84.0) | 30.00 | 2.73 |" in out
    assert "| recrl baseline: random | 25.00 ± 1.00 (over test episodes) | 10.00 | 2.50 |" in out
