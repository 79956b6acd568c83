"""Evaluation accounting and baselines, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from tensordict import TensorDict

from recrl.baselines import MostPopularRecommender, MyopicOracle, RandomRecommender
from recrl.envs import InterestEvolutionEnv, RecEnv, UserResponse, UserResponseModel
from recrl.evaluation import evaluate_policy, mean_ci95, paired_gap, play_users


def test_mean_ci95_by_hand() -> None:
    mean, half_width = mean_ci95(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert mean == pytest.approx(2.5)
    # sample sd = sqrt(5/3); 1.959964 * sd / sqrt(4)
    assert half_width == pytest.approx(1.959964 * math.sqrt(5 / 3) / 2)


def test_paired_gap_by_hand() -> None:
    # Per-user differences 2, 1, 2: mean 5/3, sample sd sqrt(1/3).
    mean, half_width = paired_gap(torch.tensor([3.0, 5.0, 7.0]), torch.tensor([1.0, 4.0, 5.0]))
    assert mean == pytest.approx(5 / 3)
    assert half_width == pytest.approx(1.959964 * math.sqrt(1 / 3) / math.sqrt(3))
    with pytest.raises(ValueError, match="same users"):
        paired_gap(torch.zeros(3), torch.zeros(4))


def test_policies_played_with_the_same_seed_meet_the_same_users_in_the_same_order() -> None:
    """What the paired gap relies on: the same policy played twice gives a gap of exactly 0
    user by user, while its return interval is wide (users differ); two policies' mean gap is
    the difference of their mean returns."""
    def make_env(num_users: int, seed: int) -> InterestEvolutionEnv:
        return InterestEvolutionEnv(num_users, seed=seed, num_items=40, time_budget=20.0)

    def play(policy_for_env):
        return play_users(make_env, policy_for_env, num_users=64, seed=3, max_steps=2000)

    oracle = play(MyopicOracle)
    again = play(MyopicOracle)
    popular = play(lambda env: popular_by_id(40))
    assert paired_gap(oracle.returns, again.returns) == (0.0, 0.0)
    assert mean_ci95(oracle.returns)[1] > 1.0  # users differ: the interval of one policy is wide
    gap, gap_ci95 = paired_gap(oracle.returns, popular.returns)
    assert gap == pytest.approx(oracle.returns.mean().item() - popular.returns.mean().item())
    assert gap_ci95 > 0


def popular_by_id(num_items: int) -> MostPopularRecommender:
    """Counts that make item N the most popular, then N-1, ..."""
    return MostPopularRecommender(torch.arange(num_items + 1, dtype=torch.float))


def test_users_who_never_click_leave_after_budget_over_skip_cost() -> None:
    # A huge no-click weight makes P(click) ~ 0: each step costs 0.5 of a budget of 5.
    env = InterestEvolutionEnv(8, seed=0, num_items=50, time_budget=5.0, no_click_weight=1e12)
    metrics = evaluate_policy(env, popular_by_id(50))
    assert metrics["episode_length"] == 10 and metrics["episode_length_ci95"] == 0
    assert metrics["return_mean"] == 0 and metrics["clicks_mean"] == 0 and metrics["ctr"] == 0
    # Every user gets items 50, 49, ..., 41 (the history mask forbids repeats): 10 of 50 items.
    assert metrics["coverage"] == pytest.approx(10 / 50)
    assert metrics["num_users"] == 8


def test_users_who_always_click_watch_until_the_budget_is_spent() -> None:
    # A tiny no-click weight makes P(click) ~ 1; without quality gain a click costs 4 of 20.
    env = InterestEvolutionEnv(
        16, seed=0, num_items=50, time_budget=20.0, no_click_weight=1e-12, quality_gain=0.0
    )
    metrics = evaluate_policy(env, RandomRecommender(seed=0))
    assert metrics["episode_length"] == 5
    assert metrics["clicks_mean"] == 5 and metrics["ctr"] == 1
    assert metrics["return_mean"] == pytest.approx(20.0)  # 5 clicks x watch time 4
    assert metrics["return_ci95"] == pytest.approx(0.0)


def test_most_popular_takes_the_most_clicked_allowed_item() -> None:
    policy = MostPopularRecommender(torch.tensor([0.0, 5.0, 9.0, 9.0, 1.0]))
    mask = torch.tensor([[False, True, True, True, True],   # 2 and 3 tie: lowest id wins
                         [False, True, False, True, True],  # 2 masked: 3
                         [False, True, False, False, True]])
    out = policy(TensorDict({"action_mask": mask}, batch_size=[3]))
    assert out["action"].tolist() == [2, 3, 1]


def test_random_recommender_is_uniform_over_allowed_items() -> None:
    mask = torch.zeros(20_000, 6, dtype=torch.bool)
    mask[:, [2, 4, 5]] = True
    action = RandomRecommender(seed=0)(TensorDict({"action_mask": mask}, batch_size=[20_000]))["action"]
    counts = torch.bincount(action, minlength=6).float() / 20_000
    assert counts[[0, 1, 3]].sum() == 0
    torch.testing.assert_close(counts[[2, 4, 5]], torch.full((3,), 1 / 3), atol=0.02, rtol=0)


def test_myopic_oracle_picks_the_best_immediate_item() -> None:
    env = InterestEvolutionEnv(64, seed=3)
    td = env.reset()
    expected = env.expected_immediate_reward()
    action = MyopicOracle(env)(td)["action"]
    torch.testing.assert_close(expected.gather(1, action[:, None]).squeeze(1), expected.max(1).values)


def test_oracle_beats_random_and_same_users_give_same_numbers() -> None:
    def run(policy_for_env):
        env = InterestEvolutionEnv(300, seed=42)
        return evaluate_policy(env, policy_for_env(env))

    oracle = run(MyopicOracle)
    random_a, random_b = run(lambda env: RandomRecommender(seed=0)), run(lambda env: RandomRecommender(seed=0))
    assert random_a == random_b
    assert oracle["return_mean"] - oracle["return_ci95"] > random_a["return_mean"] + random_a["return_ci95"]
    assert oracle["ctr"] > 0.4 > random_a["ctr"]  # the oracle's clicks come from knowing x


def test_no_oracle_for_users_without_exposed_state() -> None:
    """A user model that keeps its state to itself gets no myopic oracle, with a clear error."""

    class OpaqueUsers(UserResponseModel):
        def reset(self, mask: torch.Tensor, generator: torch.Generator) -> None:
            pass

        def respond(self, action: torch.Tensor, generator: torch.Generator) -> UserResponse:
            no = torch.zeros_like(action, dtype=torch.bool)
            return UserResponse(click=no, watch_time=torch.zeros(action.shape), done=no)

    env = RecEnv(OpaqueUsers(4, 30), history_length=5)
    assert not env.has_expected_reward
    assert InterestEvolutionEnv(4).has_expected_reward
    with pytest.raises(TypeError, match="no myopic oracle"):
        MyopicOracle(env)


def _evaluate_in_process_group(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One process of test_under_ddp_rank_0_plays_the_users_of_a_one_process_run."""
    import torch.distributed as dist

    from recrl.evaluation import play_users, summarise

    def make_env(num_users: int, seed: int) -> InterestEvolutionEnv:
        if rank != 0:
            raise AssertionError("only rank 0 plays the users")
        return InterestEvolutionEnv(num_users, seed=seed, num_items=40)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        summary = summarise(play_users(make_env, lambda env: RandomRecommender(seed=7),
                                       num_users=9, seed=100, max_steps=2000))
        torch.save(summary, f"{out_dir}/{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_under_ddp_rank_0_plays_the_users_of_a_one_process_run(tmp_path) -> None:
    """Two gloo processes: rank 0 plays all 9 users, rank 1 none (its env would raise), and
    both report exactly what one process playing the same users reports, so runs on any number
    of devices meet the same users."""
    import torch.multiprocessing as mp

    mp.spawn(_evaluate_in_process_group, args=(2, str(tmp_path / "init"), str(tmp_path)),
             nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"{r}.pt", weights_only=False) for r in (0, 1))
    assert first == second
    alone = evaluate_policy(InterestEvolutionEnv(9, seed=100, num_items=40),
                            RandomRecommender(seed=7), max_steps=2000)
    assert first == alone
    assert first["num_users"] == 9 and "users_per_process" not in first
