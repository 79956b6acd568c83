"""Slates: RecSim's choice model and candidate mode, slate baselines, list metrics, Plackett-Luce."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torchrl.envs.utils import check_env_specs, step_mdp

from recrl.baselines import MostPopularRecommender, MyopicOracle, RandomRecommender, top_slate
from recrl.distributions import PlackettLuce
from recrl.envs import InterestEvolutionEnv
from recrl.evaluation import evaluate_policy, slate_diversity, slate_ndcg
from recrl.observation import CLICKED, SHOWN, chosen_position, uniform_valid_slate

#: RecSim's own interest-evolution simulator (recsim-no-tf 0.2.3) under a uniformly random slate
#: policy, 2000 episodes each, measured with bench/recsim_reference.py (docs/slates.md):
#: (slate size, candidates) -> (episode length, return, clicks per step).
RECSIM_RANDOM = {
    (2, 10): (84.428, 154.228, 0.4623),
    (10, 10): (52.427, 169.998, 0.8220),
}


def random_slate_stats(slate_size: int, num_candidates: int, catalogue_seed: int,
                       num_users: int = 1000) -> tuple[float, float, float, torch.Tensor]:
    """Episode length, return, clicks per step and clicks per slate position of exactly one
    episode per user under the uniformly random slate policy."""
    env = InterestEvolutionEnv(num_users, seed=100 + catalogue_seed,
                               catalogue_seed=catalogue_seed, slate_size=slate_size,
                               num_candidates=num_candidates)
    generator = torch.Generator().manual_seed(catalogue_seed)
    ret, length, clicks = (torch.zeros(num_users) for _ in range(3))
    positions = torch.zeros(slate_size)
    alive = torch.ones(num_users, dtype=torch.bool)
    td = env.reset()
    while alive.any():
        td["action"] = uniform_valid_slate(td["action_mask"], slate_size, generator)
        td = env.step(td)
        ret += td["next", "reward"][:, 0] * alive
        length += alive
        clicks += td["next", "click"] * alive
        chosen = chosen_position(td["next", "history_response"], slate_size)
        positions += torch.nn.functional.one_hot(chosen[alive & (chosen >= 0)],
                                                 slate_size).sum(0)
        alive &= ~td["next", "done"][:, 0]
        td = step_mdp(td)
    return (length.mean().item(), ret.mean().item(), (clicks.sum() / length.sum()).item(),
            positions / positions.sum())


@pytest.mark.parametrize(("slate_size", "num_candidates"), list(RECSIM_RANDOM))
def test_random_slates_match_recsim(slate_size: int, num_candidates: int) -> None:
    """Episode length, return and clicks per step within 5% of RecSim's simulator; no position
    effect (RecSim's proportional choice model has none)."""
    stats = [random_slate_stats(slate_size, num_candidates, seed) for seed in range(2)]
    measured = torch.tensor([s[:3] for s in stats]).mean(0).tolist()
    for name, ours, recsim in zip(("length", "return", "clicks/step"), measured,
                                  RECSIM_RANDOM[(slate_size, num_candidates)]):
        assert abs(ours / recsim - 1) < 0.05, (name, ours, recsim)
    shares = torch.stack([s[3] for s in stats]).mean(0)
    assert torch.allclose(shares, torch.full((slate_size,), 1 / slate_size), atol=0.02), shares


def identical_users(env: InterestEvolutionEnv, interest: torch.Tensor) -> None:
    """Every user of ``env`` gets the interests ``interest`` [K] and a large budget."""
    env.users.interest = interest.expand_as(env.users.interest).clone()
    env.users.budget = torch.full_like(env.users.budget, 1e6)


def test_slate_choice_is_recsims_proportional_model() -> None:
    """P(item j) = w_j / (sum w + 2), w = x_c + 1; P(nothing) = 2 / (sum w + 2), by hand."""
    num_users = 40_000
    env = InterestEvolutionEnv(num_users, seed=0, num_items=50, num_topics=4, slate_size=3,
                               history_length=6)
    env.reset()
    interest = torch.tensor([0.5, -0.5, 0.0, 1.0])
    identical_users(env, interest)
    # Three items of topics 0, 1 and 3: weights 1.5, 0.5 and 2.0, no-click 2.0 (total 6.0).
    items = [int((env.item_cluster == topic).nonzero()[1]) for topic in (0, 1, 3)]
    slate = torch.tensor(items).expand(num_users, 3)
    response = env.users.respond_slate(slate, env.rng)
    shares = torch.stack([(response.position == j).float().mean() for j in (0, 1, 2, -1)])
    assert torch.allclose(shares, torch.tensor([1.5, 0.5, 2.0, 2.0]) / 6.0, atol=0.01), shares
    # The reward is the chosen item's watch time (min(budget, length)), 0 without a click.
    assert torch.equal(response.watch_time, torch.where(response.position >= 0, 4.0, 0.0))


def test_a_slate_of_one_is_the_single_item_model_draw_for_draw() -> None:
    single = InterestEvolutionEnv(300, seed=5, slate_size=1)
    slate = InterestEvolutionEnv(300, seed=5, slate_size=1)
    single.reset(), slate.reset()
    generator = torch.Generator().manual_seed(0)
    for _ in range(30):
        items = torch.randint(1, 501, (300,), generator=generator)
        one = single.users.respond(items, single.rng)
        listed = slate.users.respond_slate(items[:, None], slate.rng)
        assert torch.equal(one.click, listed.position == 0)
        assert torch.equal(one.watch_time, listed.watch_time)
        assert torch.equal(one.done, listed.done)
    assert torch.equal(single.users.interest, slate.users.interest)


def test_the_slate_enters_the_window_in_order_with_its_responses() -> None:
    env = InterestEvolutionEnv(64, seed=3, slate_size=3, history_length=9)
    check_env_specs(env)
    assert env.action_spec.shape == (64, 3)
    td = env.reset()
    generator = torch.Generator().manual_seed(0)
    slates = []
    for _ in range(4):
        td["action"] = uniform_valid_slate(td["action_mask"], 3, generator)
        slates.append(td["action"])
        td = env.step(td)
        nxt = td["next"]
        assert torch.equal(nxt["history"][:, -3:], td["action"])
        codes = nxt["history_response"][:, -3:]
        assert ((codes == CLICKED).sum(-1) <= 1).all()
        assert torch.isin(codes, torch.tensor([SHOWN, CLICKED])).all()
        assert torch.equal(nxt["click"], (codes == CLICKED).any(-1))
        # The reward is the chosen item's watch time, written at its position.
        assert torch.allclose(nxt["reward"][:, 0], nxt["history_watch_time"][:, -3:].sum(-1))
        # Every item of the visible window is masked (mask_history).
        assert not nxt["action_mask"].gather(1, nxt["history"]).any()
        td = step_mdp(td)
    # The window holds the last three slates, oldest first (no user has left this early).
    assert torch.equal(td["history"], torch.cat(slates[1:], dim=1))


def test_candidates_are_drawn_anew_every_step_among_allowed_items() -> None:
    env = InterestEvolutionEnv(32, seed=0, slate_size=2, num_candidates=10, history_length=4)
    td = env.reset()
    generator = torch.Generator().manual_seed(0)
    previous = td["action_mask"]
    changed = 0
    for _ in range(5):
        assert (td["action_mask"].sum(-1) == 10).all()
        td["action"] = uniform_valid_slate(td["action_mask"], 2, generator)
        td = step_mdp(env.step(td))
        assert (td["action_mask"].sum(-1) == 10).all()
        assert not td["action_mask"].gather(1, td["history"]).any()  # never a window item
        changed += int((td["action_mask"] != previous).any(-1).sum())
        previous = td["action_mask"]
    assert changed == 5 * 32  # every user gets fresh candidates every step


def test_candidate_draws_are_uniform() -> None:
    """Over many users each item is a candidate with probability C / N."""
    env = InterestEvolutionEnv(20_000, seed=0, num_items=40, num_candidates=8, history_length=4,
                               mask_history=False)
    share = env.reset()["action_mask"][:, 1:].float().mean(0)
    assert torch.allclose(share, torch.full((40,), 0.2), atol=0.015)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"slate_size": 0}, "env.slate_size must be an integer >= 1"),
        ({"slate_size": 3, "num_candidates": 2}, "larger than env.num_candidates"),
        ({"num_candidates": -1}, "env.num_candidates must be an integer >= 0"),
        ({"slate_size": 30, "history_length": 20}, "the window must hold at least one whole"),
        ({"num_items": 25, "history_length": 20, "num_candidates": 10}, "need 10 allowed items"),
    ],
)
def test_bad_slate_settings_raise_one_clear_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InterestEvolutionEnv(4, **kwargs)


def test_uniform_valid_slate_is_distinct_and_allowed() -> None:
    mask = torch.zeros(5000, 8, dtype=torch.bool)
    mask[:, [2, 3, 5, 7]] = True
    slates = uniform_valid_slate(mask, 3, torch.Generator().manual_seed(0))
    assert mask.gather(1, slates).all()
    assert (slates.sort(-1).values.diff(dim=-1) > 0).all()  # distinct
    # Every ordered slate of 3 of the 4 allowed items equally often (24 of them).
    counts = torch.unique(slates, dim=0, return_counts=True)[1]
    assert counts.numel() == 24 and counts.min() > 5000 / 24 * 0.7


def test_top_slate_and_chosen_position() -> None:
    scores = torch.tensor([[-math.inf, 1.0, 3.0, 2.0], [-math.inf, 5.0, -math.inf, 4.0]])
    assert torch.equal(top_slate(scores, 1), torch.tensor([2, 1]))
    assert torch.equal(top_slate(scores, 2), torch.tensor([[2, 3], [1, 3]]))
    codes = torch.tensor([[CLICKED, SHOWN, SHOWN, CLICKED], [SHOWN, SHOWN, SHOWN, SHOWN]])
    assert torch.equal(chosen_position(codes, 2), torch.tensor([1, -1]))


def test_slate_baselines_recommend_distinct_allowed_items() -> None:
    env = InterestEvolutionEnv(50, seed=0, slate_size=4, num_candidates=12)
    td = env.reset()
    clicks = torch.arange(501, dtype=torch.float32)
    for policy in (RandomRecommender(seed=0, slate_size=4), MostPopularRecommender(clicks, 4),
                   MyopicOracle(env)):
        slate = policy(td.clone())["action"]
        assert slate.shape == (50, 4)
        assert td["action_mask"].gather(1, slate).all()
        assert (slate.sort(-1).values.diff(dim=-1) > 0).all()
    # Most-popular: the 4 highest counts among the candidates, best first.
    expected = torch.where(td["action_mask"], clicks, -math.inf).topk(4).indices
    assert torch.equal(MostPopularRecommender(clicks, 4)(td.clone())["action"], expected)
    # The myopic oracle's slate: the k best expected immediate rewards.
    expected = env.expected_immediate_reward().topk(4).indices
    assert torch.equal(MyopicOracle(env)(td.clone())["action"], expected)


def test_slate_ndcg_and_diversity_by_hand() -> None:
    relevance = torch.tensor([[-math.inf, 3.0, 1.0, 2.0, -math.inf]])
    discount = [1.0, 1 / math.log2(3)]
    ideal = 3.0 * discount[0] + 2.0 * discount[1]
    ndcg = slate_ndcg(torch.tensor([[2, 1]]), relevance)
    assert ndcg.item() == pytest.approx((1.0 * discount[0] + 3.0 * discount[1]) / ideal)
    assert slate_ndcg(torch.tensor([[1, 3]]), relevance).item() == pytest.approx(1.0)
    vectors = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    # Pairs (1, 2): distance 5 -> 5/6; (1, 3): 0; (2, 3): 5/6. Mean of the three: 5/9.
    assert slate_diversity(torch.tensor([[1, 2, 3]]), vectors).item() == pytest.approx(5 / 9)


def test_evaluation_reports_list_metrics() -> None:
    env = InterestEvolutionEnv(200, seed=1, slate_size=3, num_candidates=10, time_budget=30.0)
    oracle = evaluate_policy(env, MyopicOracle(env))
    random = evaluate_policy(InterestEvolutionEnv(200, seed=1, slate_size=3, num_candidates=10,
                                                  time_budget=30.0), RandomRecommender(0, 3))
    for metrics in (oracle, random):
        assert metrics["slate_size"] == 3
        assert sum(metrics["click_positions"]) == pytest.approx(1.0)
        assert 0.0 <= metrics["slate_ild"] <= 1.0
    assert oracle["slate_ndcg"] == pytest.approx(1.0)  # its slates are the ideal ones
    assert random["slate_ndcg"] < 0.95
    # The oracle puts its best item first: with no position effect clicks still spread by weight.
    assert oracle["click_positions"][0] >= oracle["click_positions"][2]


# -- Plackett-Luce ---------------------------------------------------------------------------------
def test_plackett_luce_log_prob_by_hand_and_normalised() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5]])
    mask = torch.tensor([[False, True, True, True]])
    dist = PlackettLuce(logits, mask, slate_size=2)
    # P(2, 1) = e^2 / (e + e^2 + e^.5) * e / (e + e^.5)
    e = math.exp
    expected = e(2) / (e(1) + e(2) + e(0.5)) * e(1) / (e(1) + e(0.5))
    assert dist.log_prob(torch.tensor([[2, 1]])).exp().item() == pytest.approx(expected)
    slates = torch.tensor(list(itertools.permutations([1, 2, 3], 2)))
    assert dist.log_prob(slates).exp().sum().item() == pytest.approx(1.0)
    assert torch.equal(dist.mode, torch.tensor([[2, 1]]))


def test_plackett_luce_samples_follow_log_prob_and_respect_the_mask() -> None:
    torch.manual_seed(0)
    logits = torch.tensor([[0.0, 0.3, -1.0, 1.2, 0.0]])
    mask = torch.tensor([[False, True, True, True, False]])
    dist = PlackettLuce(logits, mask, slate_size=2)
    samples = dist.sample((40_000,))[:, 0]  # [40000, 2]
    assert mask[0, samples].all()
    slates = torch.tensor(list(itertools.permutations([1, 2, 3], 2)))
    expected = dist.log_prob(slates).exp()
    observed = torch.stack([(samples == s).all(-1).float().mean() for s in slates])
    assert torch.allclose(observed, expected, atol=0.01)
    # The entropy estimate is unbiased: its mean over draws is the exact entropy.
    exact = -(expected * expected.log()).sum()
    estimate = torch.stack([dist.entropy() for _ in range(3000)]).mean()
    assert estimate.item() == pytest.approx(exact.item(), abs=0.02)


def test_a_slate_env_with_candidates_round_trips_its_state_exactly() -> None:
    """The candidates on offer are simulation state: a restored env offers the same ones and
    goes on identically (exact resume of a slate run)."""
    import io

    def make(seed: int) -> InterestEvolutionEnv:  # short sessions: users leave and are reset
        return InterestEvolutionEnv(16, seed=seed, num_items=60, history_length=6,
                                    time_budget=8.0, slate_size=2, num_candidates=8)

    picks = torch.Generator().manual_seed(0)
    env = make(3)
    td = env.reset()
    for _ in range(5):
        td["action"] = uniform_valid_slate(td["action_mask"], 2, picks)
        _, td = env.step_and_maybe_reset(td)
    buffer = io.BytesIO()
    torch.save(env.simulation_state(), buffer)
    buffer.seek(0)
    twin = make(99)
    twin.reset()
    twin.load_simulation_state(torch.load(buffer, weights_only=True))
    td_twin = td.clone()
    resets = 0
    for _ in range(20):
        action = uniform_valid_slate(td["action_mask"], 2, picks)
        out, td = env.step_and_maybe_reset(td.set("action", action))
        out_twin, td_twin = twin.step_and_maybe_reset(td_twin.set("action", action.clone()))
        assert (out["next"] == out_twin["next"]).all()
        assert (td == td_twin).all()
        resets += int(out["next", "done"].sum())
    assert resets > 0
