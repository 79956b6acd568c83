"""Behaviour of the batched interest-evolution simulator (`recrl.envs`)."""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.collectors import Collector
from torchrl.envs.utils import check_env_specs, step_mdp

from recrl.envs import InterestEvolutionEnv, uniform_valid_action
from recrl.envs.interest_evolution import cluster_quality_means

GAIN = 0.9 / 3.4


class MaskedRandomPolicy(nn.Module):
    """Uniform over the valid items of each user (`RandomPolicy` ignores `action_mask`)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, action_mask: torch.Tensor) -> torch.Tensor:
        return uniform_valid_action(action_mask, self.generator)


def random_rollout(env: InterestEvolutionEnv, steps: int, policy_seed: int = 0) -> TensorDict:
    """`steps` transitions of the masked random policy through the public step/step_mdp path."""
    gen = torch.Generator().manual_seed(policy_seed)
    td = env.reset()
    out = []
    for _ in range(steps):
        td["action"] = uniform_valid_action(td["action_mask"], gen)
        td = env.step(td)
        out.append(td)
        td = step_mdp(td)
    return torch.stack(out, dim=1)


def mask_from_history(history: torch.Tensor, num_items: int) -> torch.Tensor:
    """Reference action mask, [B, N+1]: rebuilt from scratch."""
    mask = torch.ones(history.shape[0], num_items + 1, dtype=torch.bool)
    mask[:, 0] = False
    return mask.scatter(1, history, False)


def mask_valid(data: TensorDict) -> bool:
    """Every action of a rollout was allowed by the mask the policy saw."""
    return bool(data["action_mask"].gather(-1, data["action"][..., None]).all())


def test_check_env_specs() -> None:
    check_env_specs(InterestEvolutionEnv(4, seed=0, num_items=50))


def test_keys_shapes_dtypes_and_mask() -> None:
    B, N, L = 3, 30, 5
    env = InterestEvolutionEnv(B, seed=0, num_items=N, history_length=L)
    assert (env.num_items, env.history_length, tuple(env.batch_size)) == (N, L, (B,))
    expected = {
        "history": ((B, L), torch.int64),
        "history_response": ((B, L), torch.int64),
        "history_watch_time": ((B, L), torch.float32),
        "action_mask": ((B, N + 1), torch.bool),
        "click": ((B,), torch.bool),
        "done": ((B, 1), torch.bool),
        "terminated": ((B, 1), torch.bool),
        "truncated": ((B, 1), torch.bool),
    }
    td = env.reset()
    for key, (shape, dtype) in expected.items():
        assert (tuple(td[key].shape), td[key].dtype) == (shape, dtype), key
    assert not td["history"].any() and not td["history_response"].any()
    assert not td["click"].any() and not td["done"].any()
    assert torch.equal(td["action_mask"], mask_from_history(td["history"], N))

    gen = torch.Generator().manual_seed(0)
    for t in range(2 * L + 3):  # long enough for items to leave the window
        action = uniform_valid_action(td["action_mask"], gen)
        td["action"] = action
        stepped = env.step(td)
        nxt = stepped["next"]
        for key, (shape, dtype) in {**expected, "reward": ((B, 1), torch.float32)}.items():
            assert (tuple(nxt[key].shape), nxt[key].dtype) == (shape, dtype), key
        hist = nxt["history"]
        assert torch.equal(hist[:, -1], action)
        assert torch.equal(hist[:, :-1], td["history"][:, 1:])  # shifted left
        assert (hist[:, : max(L - t - 1, 0)] == 0).all()  # left padding
        assert torch.equal(nxt["action_mask"], mask_from_history(hist, N))
        clicked = nxt["history_response"][:, -1] == 2
        assert torch.equal(clicked, nxt["click"])
        assert ((nxt["history_response"] > 0) == (hist > 0)).all()
        assert torch.equal(nxt["history_watch_time"][:, -1], nxt["reward"][:, 0])
        assert (nxt["reward"][~clicked] == 0).all() and (nxt["reward"][clicked] > 0).all()
        td = step_mdp(stepped)


def test_mask_history_off_keeps_every_item_but_padding() -> None:
    env = InterestEvolutionEnv(2, seed=0, num_items=10, history_length=20, mask_history=False)
    data = random_rollout(env, 25)
    assert (data["next", "action_mask"][..., 0] == 0).all()
    assert data["next", "action_mask"][..., 1:].all()


def test_single_step_follows_the_model() -> None:
    """All users see item 1 (cluster c, quality q) with x_c = 0.5: check every formula."""
    B, c, q, x_c = 4000, 3, -1.5, 0.5
    env = InterestEvolutionEnv(B, seed=0, num_items=30, history_length=5)
    td = env.reset()
    env.item_cluster[1], env.item_quality[1] = c, q
    env.interest[:, c] = x_c
    env.budget[: B // 2] = 2.0  # less than one item: the watch time is cut short
    interest_before, budget_before = env.interest.clone(), env.budget.clone()

    td["action"] = torch.ones(B, dtype=torch.int64)
    nxt = env.step(td)["next"]
    click, reward = nxt["click"], nxt["reward"][:, 0]

    assert abs(click.float().mean().item() - 1.5 / 3.5) < 0.03  # w / (w + 2), w = x_c + 1
    watch = budget_before.clamp(max=4.0)
    assert torch.allclose(reward, torch.where(click, watch, 0.0))
    expected_budget = torch.where(
        click, budget_before - watch + GAIN * watch * q, budget_before - 0.5
    )
    assert torch.allclose(env.budget, expected_budget)
    assert torch.equal(nxt["terminated"][:, 0], env.budget <= 0)
    assert nxt["terminated"][: B // 2][click[: B // 2]].all()  # 2 - 2 + gain * 2 * q < 0

    step = 0.3 * (1 - abs(x_c)) * (1 - x_c)
    moved = env.interest[:, c] - x_c
    assert torch.allclose(moved[~click], torch.zeros(()))
    assert torch.allclose(moved[click].abs(), torch.full((), step))
    up_rate = (moved[click] > 0).float().mean().item()
    assert abs(up_rate - (x_c + 1) / 2) < 0.05
    others = torch.arange(env.interest.shape[1]) != c
    assert torch.equal(env.interest[:, others], interest_before[:, others])


def test_interest_moves_within_bounds() -> None:
    env = InterestEvolutionEnv(500, seed=1, num_items=40, history_length=5, interest_step=0.9)
    random_rollout(env, 60)
    assert env.interest.min() >= -1 and env.interest.max() <= 1


def test_expected_immediate_reward() -> None:
    env = InterestEvolutionEnv(2, seed=0, num_items=15, history_length=3)
    data = random_rollout(env, 2)
    env.budget[0] = 1.5
    expected = env.expected_immediate_reward()
    mask = data["next", "action_mask"][:, -1]
    assert torch.isneginf(expected[~mask]).all()
    w = env.interest[:, env.item_cluster] + 1  # [B, N+1]
    formula = w / (w + 2) * env.budget.clamp(max=4.0)[:, None]
    assert torch.allclose(expected[mask], formula[mask])


def test_truncation_after_max_episode_steps() -> None:
    env = InterestEvolutionEnv(3, seed=0, num_items=20, history_length=4, max_episode_steps=3)
    data = random_rollout(env, 3)
    nxt = data["next"]
    assert not nxt["truncated"][:, :2].any() and nxt["truncated"][:, 2].all()
    assert torch.equal(nxt["done"], nxt["terminated"] | nxt["truncated"])
    assert not nxt["terminated"].any()


OBS_KEYS = ("history", "history_response", "history_watch_time", "action_mask", "click")


@pytest.mark.parametrize("reset_shape", [(4, 1), (4,)])
def test_partial_reset_only_touches_flagged_users(reset_shape: tuple[int, ...]) -> None:
    env = InterestEvolutionEnv(4, seed=0, num_items=30, history_length=5)
    td = step_mdp(random_rollout(env, 7)[:, -1])  # what a collector holds after a step
    before = td.clone()
    interest, budget = env.interest.clone(), env.budget.clone()
    reset = torch.tensor([True, False, True, False])
    td["_reset"] = reset.reshape(reset_shape)
    out = env.reset(td)

    keep = ~reset
    for key in OBS_KEYS:
        assert torch.equal(out[key][keep], before[key][keep]), key
    assert before["history"][keep].all()  # 7 steps filled the 5-item window
    assert torch.equal(env.budget[keep], budget[keep])
    assert torch.equal(env.interest[keep], interest[keep])

    assert torch.equal(env.budget[reset], torch.full((2,), 200.0))
    assert not torch.equal(env.interest[reset], interest[reset])
    for key in ("history", "history_response", "history_watch_time", "click"):
        assert not out[key][reset].any(), key
    assert torch.equal(out["action_mask"][reset], mask_from_history(out["history"][reset], 30))
    assert not out["done"].any()

    # The reset users start a fresh window; the others carry on from their state.
    out["action"] = uniform_valid_action(out["action_mask"], torch.Generator().manual_seed(0))
    nxt = env.step(out)["next"]
    assert (nxt["history"][reset, :-1] == 0).all()
    assert torch.equal(nxt["history"][keep, :-1], before["history"][keep, 1:])


def test_same_seed_same_trajectory_and_different_seed_differs() -> None:
    def rollout(seed: int) -> TensorDict:
        return random_rollout(InterestEvolutionEnv(8, seed=seed, num_items=40), 30)

    a, b, c = rollout(3), rollout(3), rollout(4)
    assert (a == b).all()
    assert not torch.equal(a["next", "reward"], c["next", "reward"])

    env = InterestEvolutionEnv(8, seed=3, num_items=40)
    random_rollout(env, 5)
    env.set_seed(3)  # re-seeding replays the same users and clicks
    assert (random_rollout(env, 30) == a).all()


def test_catalogue_depends_on_catalogue_seed_only() -> None:
    a = InterestEvolutionEnv(2, seed=1, num_items=300, catalogue_seed=0)
    b = InterestEvolutionEnv(2, seed=2, num_items=300, catalogue_seed=0)
    c = InterestEvolutionEnv(2, seed=1, num_items=300, catalogue_seed=1)
    assert torch.equal(a.item_cluster, b.item_cluster)
    assert torch.equal(a.item_quality, b.item_quality)
    assert not torch.equal(a.item_cluster, c.item_cluster)
    a.reset(), b.reset()
    assert not torch.equal(a.interest, b.interest)  # users follow the env seed

    assert a.item_cluster[0] == 0 and a.item_quality[0] == 0  # padding
    assert a.item_cluster[1:].min() >= 0 and a.item_cluster[1:].max() < 20
    noise = a.item_quality[1:] - cluster_quality_means(20)[a.item_cluster[1:]]
    assert abs(noise.std().item() - 0.1) < 0.02


def test_cluster_quality_means() -> None:
    recsim = torch.cat([torch.linspace(-3, 0, 14), torch.linspace(0, 3, 6)])
    assert torch.equal(cluster_quality_means(20), recsim)
    seventy_thirty = torch.cat([torch.linspace(-3, 0, 7), torch.linspace(0, 3, 3)])
    assert torch.equal(cluster_quality_means(10), seventy_thirty)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_users": 0}, "num_users"),
        ({"num_items": -5}, "num_items"),
        ({"history_length": 0}, "history_length"),
        ({"num_items": 20, "history_length": 20}, "num_items must be > history_length"),
        ({"num_topics": 0}, "num_topics"),
        ({"time_budget": 0.0}, "time_budget"),
        ({"item_length": -1.0}, "item_length"),
        ({"quality_sd": -0.1}, "quality_sd"),
        ({"no_click_weight": 0.0}, "no_click_weight"),
        ({"no_click_cost": -0.5}, "no_click_cost"),
        ({"interest_step": float("nan")}, "interest_step"),
        ({"quality_gain": float("inf")}, "quality_gain"),
        ({"max_episode_steps": 0}, "max_episode_steps"),
    ],
)
def test_invalid_parameters_raise(kwargs: dict, name: str) -> None:
    kwargs = {"num_users": 2, **kwargs}
    with pytest.raises(ValueError, match=name):
        InterestEvolutionEnv(kwargs.pop("num_users"), **kwargs)


def test_history_as_long_as_catalogue_is_fine_without_masking() -> None:
    env = InterestEvolutionEnv(2, seed=0, num_items=5, history_length=20, mask_history=False)
    assert random_rollout(env, 3)["next", "history"].shape == (2, 3, 20)


def test_uniform_valid_action_respects_mask() -> None:
    mask = torch.zeros(3, 101, dtype=torch.bool)
    mask[0, 1:] = True
    mask[1, 7] = True  # a single valid item: rejection sampling falls back
    mask[2, [3, 90]] = True
    gen = torch.Generator().manual_seed(0)
    draws = torch.stack([uniform_valid_action(mask, gen) for _ in range(400)])  # [400, 3]
    assert mask.gather(1, draws.T).all()
    assert (draws[:, 1] == 7).all()
    assert 0.4 < (draws[:, 2] == 3).float().mean() < 0.6


def test_collector_auto_resets_done_users() -> None:
    B = 8
    env = InterestEvolutionEnv(B, seed=0, num_items=50, history_length=5, time_budget=8.0)
    policy = TensorDictModule(MaskedRandomPolicy(0), in_keys=["action_mask"], out_keys=["action"])
    collector = Collector(
        env, policy, frames_per_batch=4 * B, total_frames=20 * B,
        auto_register_policy_transforms=False,
    )
    batches = list(collector)
    collector.shutdown()
    data = torch.cat(batches, dim=1)  # [B, T]
    done = data["next", "done"][..., 0]
    assert done.sum() > B  # short budgets: every user finishes several episodes
    assert data["collector", "traj_ids"].max() >= 2 * B
    assert mask_valid(data)
    # The step after an episode end starts from a fresh user with an empty window...
    after_done = torch.zeros_like(done)
    after_done[:, 1:] = done[:, :-1]
    after_done[:, 0] = True  # the initial reset
    assert not data["history"][after_done].any()
    assert (data["history"][~after_done].count_nonzero(-1) > 0).all()
    # ...while the stored last transition keeps its real next observation.
    assert torch.equal(data["next", "history"][done][:, -1], data["action"][done])


def test_random_policy_matches_recsim() -> None:
    """RecSim reports 137.5 return / 116.8 steps for a random policy (500 episodes).

    One 500-item catalogue draw moves these by about 2%, so average five catalogues.
    """
    stats = torch.tensor([random_policy_stats(seed) for seed in range(5)])  # [5, 2]
    mean_return, mean_length = stats.mean(0).tolist()
    assert abs(mean_return / 137.5 - 1) < 0.03, mean_return
    assert abs(mean_length / 116.8 - 1) < 0.03, mean_length


def random_policy_stats(catalogue_seed: int, num_users: int = 1000) -> tuple[float, float]:
    """Mean return and length of exactly one episode per user under the random policy."""
    env = InterestEvolutionEnv(num_users, seed=100 + catalogue_seed, catalogue_seed=catalogue_seed)
    gen = torch.Generator().manual_seed(catalogue_seed)
    ret = torch.zeros(num_users)
    length = torch.zeros(num_users)
    alive = torch.ones(num_users, dtype=torch.bool)
    td = env.reset()
    while alive.any():
        td["action"] = uniform_valid_action(td["action_mask"], gen)
        td = env.step(td)
        ret += td["next", "reward"][:, 0] * alive
        length += alive
        alive &= ~td["next", "done"][:, 0]
        td = step_mdp(td)
    return ret.mean().item(), length.mean().item()
