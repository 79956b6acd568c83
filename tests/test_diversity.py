"""Diversity, exposure, novelty and category metrics (recrl/diversity.py), against hand-computed
numbers, EasyRL4Rec's own loops, and a real evaluation."""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path

import pytest
import torch

from recrl import report
from recrl.baselines import MostPopularRecommender, RandomRecommender
from recrl.diversity import (
    dissimilarity, episode_diversity, gini, majority_categories, self_information,
)
from recrl.envs import InterestEvolutionEnv, LoggedEnv, RecEnv, UserResponse, UserResponseModel
from recrl.evaluation import (
    ITEM_METRICS, Episodes, evaluate_policy, item_reference, play_episodes, summarise,
)
from recrl.ranking import log_popularity
from recrl.results import format_results_table

#: Items 1, 2, 3 at (0, 0), (3, 4), (3, 0): pairwise distances 5 (1-2), 3 (1-3), 4 (2-3).
VECTORS = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [3.0, 0.0]])


def test_gini_by_hand() -> None:
    assert gini(torch.tensor([1.0, 1.0, 1.0, 1.0])) == 0.0
    # Sorted x = 0, 0, 0, 4; weights 2i - n - 1 = -3, -1, 1, 3: G = 3 * 4 / (4 * 4) = 0.75.
    assert gini(torch.tensor([4.0, 0.0, 0.0, 0.0])) == pytest.approx(0.75)
    # x = 0, 0, 4, 4: (1 * 4 + 3 * 4) / (4 * 8) = 0.5.
    assert gini(torch.tensor([0.0, 4.0, 0.0, 4.0])) == pytest.approx(0.5)
    assert math.isnan(gini(torch.zeros(3)))


def test_intra_list_diversity_of_known_sessions() -> None:
    actions = torch.tensor([
        [1, 2, 3, 0],  # pairs at 5, 3, 4: (5/6 + 3/4 + 4/5) / 3 = 143/180
        [1, 2, 0, 0],  # one pair at 5: 5/6
        [2, 2, 0, 0],  # the same item twice: distance 0
        [3, 0, 0, 0],  # no pair: undefined
        [1, 1, 2, 0],  # pairs at 0, 5, 5: (0 + 5/6 + 5/6) / 3 = 5/9
    ])
    expected = [143 / 180, 5 / 6, 0.0, math.nan, 5 / 9]
    # Both ways to the sums: by item counts (4 items, few dims) and step by step (forced by a
    # block too small for the item table).
    for block in (1 << 22, 8):
        diversity = episode_diversity(actions, VECTORS, block_elements=block)
        torch.testing.assert_close(diversity, torch.tensor(expected, dtype=torch.float64),
                                   equal_nan=True)


def easyrl4rec_diversity(items: list[int], similarity: torch.Tensor) -> float:
    """EasyRL4Rec's ``metrics.get_diversity``, loop for loop (their similarity: 1 / (1 + d))."""
    if len(items) <= 1:
        return 1.0
    total = sum(1 - similarity[i, j].item() for i, j in combinations(items, 2))
    return total / (len(items) * (len(items) - 1) / 2)


def test_diversity_is_easyrl4recs_on_sessions_of_two_items_or_more() -> None:
    generator = torch.Generator().manual_seed(0)
    vectors = torch.randn(13, 5, generator=generator, dtype=torch.float64)
    vectors[0] = 0.0
    similarity = 1 / (1 + torch.cdist(vectors, vectors))
    lengths = torch.randint(2, 9, (30,), generator=generator)
    actions = torch.randint(1, 13, (30, 8), generator=generator)
    actions[torch.arange(8) >= lengths[:, None]] = 0
    ours = episode_diversity(actions, vectors)
    theirs = [easyrl4rec_diversity(row[row > 0].tolist(), similarity) for row in actions]
    torch.testing.assert_close(ours, torch.tensor(theirs, dtype=torch.float64))
    assert dissimilarity(torch.tensor(1.0)).item() == 0.5


def test_self_information_by_hand() -> None:
    # Counts 2, 1, 1, 0 of 4: shares 1/2, 1/4, 1/4 and, never seen, the smallest share 1/4.
    information = self_information(torch.tensor([7.0, 2.0, 1.0, 1.0, 0.0]))  # padding ignored
    torch.testing.assert_close(information, torch.tensor([0.0, 1.0, 2.0, 2.0, 2.0],
                                                         dtype=torch.float64))
    assert self_information(torch.zeros(4)).isnan().all()


def test_majority_categories_by_hand() -> None:
    # Items 1..6 in categories 1, 1, 1, 2, 2, 3. By the catalogue: shares 1/2, 1/3, 1/6,
    # cumulative 0.5, 0.83, 1: only category 1 stays within 0.8.
    categories = torch.tensor([0, 1, 1, 1, 2, 2, 3])
    by_catalogue = majority_categories(categories, torch.ones(7))
    assert by_catalogue.tolist() == [False, True, True, True, False, False, False]
    assert majority_categories(categories, torch.ones(7), top_share=0.9).tolist() == [
        False, True, True, True, True, True, False]
    # By interactions: category 2 holds 10 of 11 (0.91 > 0.8), still the first is kept.
    by_clicks = majority_categories(categories, torch.tensor([0.0, 0, 0, 1, 5, 5, 0]))
    assert by_clicks.tolist() == [False, False, False, False, True, True, False]


class TaggedUsers(UserResponseModel):
    """Users who never click and leave after ``steps`` recommendations; items 1..6 in
    categories 1, 1, 1, 2, 2, 3 and at the given vectors (None: the catalogue has none)."""

    def __init__(self, num_users: int, steps: int, vectors: torch.Tensor | None,
                 categories: torch.Tensor | None) -> None:
        super().__init__(num_users, 6)
        self.steps, self.vectors, self.categories = steps, vectors, categories
        self.shown = torch.zeros(num_users)

    def reset(self, mask: torch.Tensor, generator: torch.Generator) -> None:
        self.shown = self.shown.where(~mask, 0.0)

    def respond(self, action: torch.Tensor, generator: torch.Generator) -> UserResponse:
        self.shown = self.shown + 1
        no = torch.zeros_like(action, dtype=torch.bool)
        return UserResponse(click=no, watch_time=torch.zeros(action.shape),
                            done=self.shown >= self.steps)

    def item_vectors(self) -> torch.Tensor | None:
        return self.vectors

    def item_categories(self) -> torch.Tensor | None:
        return self.categories


def sequence_policy(items: list[int]):
    """Recommends ``items`` in order to every user (the history mask is off)."""
    state = {"step": 0}

    def policy(td):
        item = items[state["step"] % len(items)]
        state["step"] += 1
        return td.set("action", torch.full(td.batch_size, item, dtype=torch.long))

    return policy


def test_a_known_session_through_the_evaluation() -> None:
    """Two users get items 1, 4, 2, 6, 3: categories 1, 2, 1, 3, 1, three of five in the
    majority category 1 (MCD 0.6); with popularity counts 1, 1, 2, 0, 0, 4 for items 1..6
    (shares 1/8, 1/8, 1/4, 0 -> 1/8, 0 -> 1/8, 1/2) the self-information is 3, 3, 2, 3, 3, 1 bits,
    so the session's novelty is (3 + 3 + 3 + 1 + 2) / 5 = 2.4."""
    vectors = torch.cat([VECTORS, torch.tensor([[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])])
    categories = torch.tensor([0, 1, 1, 1, 2, 2, 3])
    env = RecEnv(TaggedUsers(2, 5, vectors, categories), history_length=3, mask_history=False)
    popularity = torch.tensor([0.0, 1, 1, 2, 0, 0, 4])
    episodes = play_episodes(env, sequence_policy([1, 4, 2, 6, 3]), max_steps=50,
                             training_popularity=popularity)
    assert episodes.exposure.tolist() == [0, 2, 2, 2, 2, 0, 2]
    metrics = summarise(episodes)
    assert metrics["coverage"] == pytest.approx(5 / 6)
    # Counts 2, 2, 2, 2, 0, 2: sorted 0, 2, 2, 2, 2, 2; weights -5, -3, -1, 1, 3, 5 -> 10 / 60.
    assert metrics["exposure_gini"] == pytest.approx(1 / 6)
    assert metrics["novelty"] == pytest.approx(2.4)
    # By the popularity, categories 1 (items 1, 2, 3) and 3 (item 6) hold 4 of 8 interactions
    # each: the tie ranks 1 first, and 1 and 3 together (1.0) pass 0.8, so only 1 is majority.
    assert metrics["mcd"] == pytest.approx(3 / 5)
    pair_distances = torch.cdist(vectors[[1, 4, 2, 6, 3]], vectors[[1, 4, 2, 6, 3]])
    expected_ild = dissimilarity(pair_distances).sum().item() / (5 * 4)
    assert metrics["ild"] == pytest.approx(expected_ild)


def test_metrics_without_their_inputs_are_left_out_and_print_as_dashes() -> None:
    env = RecEnv(TaggedUsers(3, 4, None, None), history_length=3)
    metrics = evaluate_policy(env, RandomRecommender(seed=0), max_steps=50)
    assert {"coverage", "exposure_gini"} <= metrics.keys()
    assert not {"ild", "novelty", "mcd"} & metrics.keys()
    table = format_results_table({"agent": metrics, "baselines": {}})
    assert table.splitlines()[-1].split()[-3:] == ["—", "—", "—"]
    # No clicks yet (the first validation of a run): novelty and MCD are there, undefined.
    env = RecEnv(TaggedUsers(3, 4, None, torch.tensor([0, 1, 1, 1, 2, 2, 3])), history_length=3)
    early = evaluate_policy(env, RandomRecommender(seed=0), max_steps=50,
                            training_popularity=torch.zeros(7))
    assert math.isnan(early["novelty"]) and math.isnan(early["mcd"])


def one_topic_popularity(env: InterestEvolutionEnv, topic: int) -> torch.Tensor:
    """Counts that put every item of ``topic`` above every other item."""
    counts = torch.arange(env.num_items + 1, dtype=torch.float)
    return counts + 1000.0 * (env.item_cluster == topic) * (torch.arange(env.num_items + 1) > 0)


def test_a_real_evaluation_tells_a_random_policy_from_a_one_topic_policy() -> None:
    def make_env() -> InterestEvolutionEnv:
        return InterestEvolutionEnv(64, seed=5, num_items=200, num_topics=4, time_budget=20.0)

    env = make_env()
    clicks = one_topic_popularity(env, topic=1)  # "training" clicked topic 1 most
    random = evaluate_policy(env, RandomRecommender(seed=0), training_popularity=clicks)
    focused = evaluate_policy(make_env(), MostPopularRecommender(clicks),
                              training_popularity=clicks)
    for metrics in (random, focused):
        assert set(ITEM_METRICS) <= metrics.keys()
        assert 0 <= metrics["ild"] < 1 and 0 <= metrics["exposure_gini"] < 1
        assert 0 <= metrics["mcd"] <= 1 and metrics["novelty"] > 0
    # Topic one-hots: two topics are sqrt(2) apart; a random session mixes 4 topics, so about
    # 3/4 of its pairs cross topics.
    assert random["ild"] == pytest.approx(0.75 * dissimilarity(torch.tensor(2.0).sqrt()).item(),
                                          abs=0.03)
    assert focused["ild"] == 0.0  # one topic only
    assert random["exposure_gini"] < 0.3 < focused["exposure_gini"]
    assert random["coverage"] > focused["coverage"]
    assert random["novelty"] > focused["novelty"]  # the popular items are the least novel
    # By the clicks, topic 1 dominates training: the focused policy shows nothing else.
    assert focused["mcd"] == 1.0 and random["mcd"] < 0.5


def test_the_evaluation_mcd_is_the_exposure_share_of_the_majority_categories() -> None:
    env = InterestEvolutionEnv(32, seed=1, num_items=60, time_budget=20.0)
    episodes = play_episodes(env, RandomRecommender(seed=0))
    in_majority = item_reference(env).in_majority
    expected = (episodes.exposure * in_majority).sum() / episodes.exposure.sum()
    assert summarise(episodes)["mcd"] == pytest.approx(expected.item())
    assert "novelty" not in summarise(episodes)  # no log, no training clicks


def test_interest_evolution_items_are_their_topics() -> None:
    env = InterestEvolutionEnv(2, num_items=30, num_topics=5, observe_topics=False)
    vectors, categories = env.item_vectors, env.item_categories
    assert vectors.shape == (31, 5) and vectors[0].eq(0).all()
    assert vectors[1:].sum(1).eq(1).all()
    assert categories[0] == 0 and categories[1:].tolist() == (env.item_cluster[1:] + 1).tolist()


def test_logged_users_measure_in_the_taste_space_against_the_log(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    rows = ["user,item,timestamp,rating"] + [
        f"{u},{(u + 3 * k) % 30 + 1},{k},{1 + (u + k) % 5}" for u in range(40) for k in range(12)]
    path.write_text("\n".join(rows) + "\n")
    env = LoggedEnv(8, data={"path": str(path), "format": "table",
                             "columns": {"rating": "rating"}, "min_item_interactions": 1},
                    fit_epochs=20, history_length=4, boredom_quantile=0.0, max_episode_steps=10,
                    seed=0)
    vectors = env.item_vectors
    assert vectors.shape == env.users.taste.item_vectors.shape and vectors[0].eq(0).all()
    assert env.item_categories is None
    sequences = env.sequences
    assert torch.equal(env.logged_popularity,
                       log_popularity(sequences, users=~sequences.heldout_users))
    metrics = evaluate_policy(env, RandomRecommender(seed=0), max_steps=100)
    assert {"ild", "novelty"} <= metrics.keys() and "mcd" not in metrics
    assert 0 < metrics["ild"] < 1 and metrics["novelty"] > 0


def test_every_table_lists_the_same_item_metrics() -> None:
    """recrl.report keeps its own copy (it reads JSON without torch)."""
    from recrl.tracking import RESULT_COLUMNS

    assert report.ITEM_METRICS == ITEM_METRICS
    assert [c for c in RESULT_COLUMNS if c in ITEM_METRICS] == list(ITEM_METRICS)
    assert Episodes._fields[:4] == ("returns", "clicks", "lengths", "exposure")
