"""Offline ranking metrics: hand-computed cases, protocol rules, sampling, torchmetrics agreement."""

from __future__ import annotations

import math

import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_hit_rate, retrieval_normalized_dcg

from recrl.data import PreprocessConfig, Sequences, load_sequences
from recrl.ranking import (
    PROTOCOL_DESCRIPTIONS,
    _sample_all_negatives,
    describe_protocol,
    evaluate_ranking,
    leave_one_out_inputs,
    log_popularity,
    most_popular_scorer,
    popularity_scores,
    ranking_metrics,
    sample_negatives,
    seen_mask,
    target_rank,
)
from tests.conftest import ML100K, needs_ml100k


def make_sequences(rows: list[list[int]], num_items: int, ratings: list[float] | None = None
                   ) -> Sequences:
    lengths = torch.tensor([len(r) for r in rows])
    return Sequences(
        items=torch.tensor([i for r in rows for i in r]),
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        num_items=num_items,
        item_raw_ids=torch.arange(-1, num_items),
        user_raw_ids=torch.arange(len(rows)),
        heldout_users=torch.zeros(len(rows), dtype=torch.bool),
        ratings=None if ratings is None else torch.tensor(ratings),
    )


# user 0: test 4, valid 3; user 1: test 3, valid 2; user 2: test 6, valid 4
TOY_ROWS = [[1, 2, 3, 4], [5, 1, 6, 2, 3], [2, 4, 6]]
TOY_RATINGS = [4.0, 3.0, 5.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 4.0, 3.0]


def random_sequences(num_users: int = 60, num_items: int = 200, seed: int = 0) -> Sequences:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 40, (num_users,), generator=generator)
    rows = [(torch.randperm(num_items, generator=generator)[:n] + 1).tolist() for n in lengths]
    return make_sequences(rows, num_items)


def history_scorer(num_items: int, seed: int = 0):
    """A deterministic function of the history, elementwise (bitwise the same in any batch)."""
    table = torch.randn(num_items + 1, num_items + 1, generator=torch.Generator().manual_seed(seed),
                        dtype=torch.float64)

    def score_fn(history, response, watch_time):
        return table[history].sum(1)  # [B, L, N+1] -> [B, N+1]

    return score_fn


# --- history windows ------------------------------------------------------------------------


def test_test_windows_are_right_aligned_with_ratings_and_clicks() -> None:
    seqs = make_sequences(TOY_ROWS, 6, TOY_RATINGS)
    inputs = leave_one_out_inputs(seqs, 3, "test")
    assert inputs.history.tolist() == [[1, 2, 3], [1, 6, 2], [0, 2, 4]]
    assert inputs.history_response.tolist() == [[2, 2, 2], [2, 2, 2], [0, 2, 2]]
    assert inputs.history_watch_time.tolist() == [[4.0, 3.0, 5.0], [2.0, 3.0, 4.0],
                                                  [0.0, 5.0, 4.0]]
    assert inputs.target.tolist() == [4, 3, 6]
    assert inputs.users.tolist() == [0, 1, 2]


def test_valid_windows_stop_before_the_validation_item() -> None:
    seqs = make_sequences(TOY_ROWS, 6)  # no ratings: every logged item watched 5.0
    inputs = leave_one_out_inputs(seqs, 3, "valid", users=torch.tensor([2, 0]))
    assert inputs.history.tolist() == [[0, 0, 2], [0, 1, 2]]
    assert inputs.history_response.tolist() == [[0, 0, 2], [0, 2, 2]]
    assert inputs.history_watch_time.tolist() == [[0.0, 0.0, 5.0], [0.0, 5.0, 5.0]]
    assert inputs.target.tolist() == [4, 3]
    assert inputs.users.tolist() == [2, 0]
    masked = leave_one_out_inputs(seqs, 2, "valid", users=torch.tensor([False, True, False]))
    assert masked.history.tolist() == [[1, 6]] and masked.target.tolist() == [2]


def test_unknown_target_and_too_short_users_are_refused() -> None:
    seqs = make_sequences([[1, 2, 3], [4]], 4)
    with pytest.raises(ValueError, match="target must be"):
        leave_one_out_inputs(seqs, 2, "train")
    with pytest.raises(ValueError, match="no valid item"):
        leave_one_out_inputs(seqs, 2, "valid")


# --- excluded items -------------------------------------------------------------------------


def test_seen_mask_is_the_whole_prefix_and_padding_never_the_target() -> None:
    seqs = make_sequences(TOY_ROWS + [[3, 1, 2, 1]], 6)
    mask = seen_mask(seqs, torch.arange(4), "test")
    assert mask.tolist() == [
        [True, True, True, True, False, False, False],  # prefix 1,2,3; target 4
        [True, True, True, False, False, True, True],  # prefix 5,1,6,2; target 3
        [True, False, True, False, True, False, False],  # prefix 2,4; target 6
        [True, False, True, True, False, False, False],  # prefix 3,1,2; target 1 seen before
    ]
    valid = seen_mask(seqs, torch.tensor([1]), "valid")  # prefix 5,1,6; target 2
    assert valid.tolist() == [[True, True, False, False, False, True, True]]


def test_seen_items_scored_higher_do_not_push_the_target_down() -> None:
    seqs = make_sequences(TOY_ROWS, 6)
    scores = torch.zeros(1, 7)
    scores[0, [1, 2, 3]] = 10.0  # user 0 saw these
    scores[0, 4] = 1.0  # the target
    result = evaluate_ranking(lambda h, r, w: scores.expand(h.shape[0], -1), seqs,
                              history_length=2, users=torch.tensor([0]), ks=(1,),
                              protocols=("full",))
    assert result["full"] == {"HR@1": 1.0, "NDCG@1": 1.0}
    higher, equal = target_rank(scores, torch.tensor([4]), excluded=torch.zeros(1, 7, dtype=bool))
    assert (higher.item(), equal.item()) == (3, 0)  # had they counted, the target would be 4th


# --- hand-computed metrics --------------------------------------------------------------------


def test_full_ranking_matches_hand_computed_values() -> None:
    seqs = make_sequences(TOY_ROWS, 6)
    # Test histories (L=2) end in 3, 2, 4: the score table is keyed by the last item.
    table = torch.zeros(7, 7)
    # user 0: allowed {4, 5, 6}, target 4; seen items score 10 but do not count.
    # 5 > 4 > 6: one higher, rank 1 -> HR@1 0, HR@2 1, NDCG@2 = 1/log2(3).
    table[3] = torch.tensor([0, 10, 10, 10, 0.5, 0.9, 0.1])
    # user 1: allowed {3, 4}, target 3 tied with 4: rank 0 or 1, each with probability 1/2
    # -> HR@1 = NDCG@1 = 1/2, HR@2 = 1, NDCG@2 = (1 + 1/log2(3)) / 2.
    table[2] = torch.tensor([0, 0, 0, 0.7, 0.7, 0, 0])
    # user 2: allowed {1, 3, 5, 6}, target 6 scored last: rank 3 -> HR@1 = HR@2 = 0, HR@4 = 1,
    # NDCG@4 = 1/log2(5).
    table[4] = torch.tensor([0, 0.9, 0, 0.8, 0, 0.7, 0.1])
    result = evaluate_ranking(lambda h, r, w: table[h[:, -1]], seqs, history_length=2,
                              ks=(1, 2, 4), protocols=("full",))["full"]
    inv3, inv5 = 1 / math.log2(3), 1 / math.log2(5)
    expected = {
        "HR@1": (0 + 0.5 + 0) / 3,
        "NDCG@1": (0 + 0.5 + 0) / 3,
        "HR@2": (1 + 1 + 0) / 3,
        "NDCG@2": (inv3 + (1 + inv3) / 2 + 0) / 3,
        "HR@4": (1 + 1 + 1) / 3,
        "NDCG@4": (inv3 + (1 + inv3) / 2 + inv5) / 3,
    }
    assert result == pytest.approx(expected, abs=1e-12)


def test_rank_to_metrics_by_hand() -> None:
    # rank 0 -> NDCG 1; rank 2 -> 1/log2(4) = 0.5; rank 10 -> outside the top 10;
    # rank 0 tied with 3 others -> positions 0..3 equally likely: HR@2 = 2/4,
    # NDCG@2 = (1 + 1/log2(3)) / 4.
    metrics = ranking_metrics(torch.tensor([0, 2, 10, 0]), torch.tensor([0, 0, 0, 3]), ks=(2, 10))
    assert metrics["HR@10"].tolist() == [1.0, 1.0, 0.0, 1.0]
    assert metrics["NDCG@10"].tolist() == pytest.approx([1.0, 0.5, 0.0, (1 + 1 / math.log2(3)
                                                                        + 0.5 + 1 / math.log2(5)) / 4])
    assert metrics["HR@2"].tolist() == [1.0, 0.0, 0.0, 0.5]
    assert metrics["NDCG@2"].tolist() == pytest.approx([1.0, 0.0, 0.0, (1 + 1 / math.log2(3)) / 4])


def test_nan_scores_are_refused() -> None:
    scores = torch.tensor([[0.0, float("nan"), 1.0]])
    with pytest.raises(ValueError, match="NaN"):
        target_rank(scores, torch.tensor([1]), excluded=torch.zeros(1, 3, dtype=torch.bool))


# --- sampled negatives ----------------------------------------------------------------------


def test_negatives_are_allowed_distinct_and_reproducible() -> None:
    seqs = random_sequences()
    users = torch.arange(seqs.num_users)
    seen = seen_mask(seqs, users)
    target = leave_one_out_inputs(seqs, 5, users=users).target
    weights = popularity_scores(seqs)
    for w in (None, weights):
        negatives = sample_negatives(seen, target, 100, w, torch.Generator().manual_seed(3))
        assert negatives.shape == (seqs.num_users, 100)
        assert not seen.gather(1, negatives).any()  # covers 0: padding is in the mask
        assert (negatives != 0).all() and (negatives != target[:, None]).all()
        ordered = negatives.sort(1).values
        assert (ordered[:, 1:] != ordered[:, :-1]).all()
        if w is not None:
            assert (w[negatives] > 0).all()
        again = sample_negatives(seen, target, 100, w, torch.Generator().manual_seed(3))
        other = sample_negatives(seen, target, 100, w, torch.Generator().manual_seed(4))
        assert torch.equal(negatives, again)
        assert not torch.equal(negatives, other)


def test_popularity_sampling_favours_popular_items() -> None:
    num_items = 400
    weights = torch.zeros(num_items + 1)
    weights[1:] = 1.0 / torch.arange(1, num_items + 1).float()  # Zipf: item 1 most popular
    seen = torch.zeros(200, num_items + 1, dtype=torch.bool)
    target = torch.full((200,), num_items)
    generator = torch.Generator().manual_seed(0)
    popular = sample_negatives(seen, target, 20, weights, generator)
    uniform = sample_negatives(seen, target, 20, None, generator)
    top = 40  # the 10% most popular items hold ~65% of the weight
    share_popular = (popular <= top).float().mean().item()
    share_uniform = (uniform <= top).float().mean().item()
    assert share_popular > 0.4 and 0.05 < share_uniform < 0.15, (share_popular, share_uniform)


def test_sampling_has_the_distribution_of_multinomial_without_replacement() -> None:
    weights = torch.tensor([0.0, 5.0, 1.0, 1.0, 2.0, 3.0, 0.5, 4.0])
    rows = 20_000
    seen = torch.zeros(rows, 8, dtype=torch.bool)
    seen[:, 2] = True
    target = torch.full((rows,), 3)
    ours = sample_negatives(seen, target, 3, weights, torch.Generator().manual_seed(0))
    allowed = torch.tensor([0, 1, 0, 0, 1, 1, 1, 1], dtype=torch.bool)
    reference = torch.multinomial(torch.where(allowed, weights, 0.0).expand(rows, -1), 3,
                                  replacement=False, generator=torch.Generator().manual_seed(1))
    frequency = torch.bincount(ours.flatten(), minlength=8) / rows
    expected = torch.bincount(reference.flatten(), minlength=8) / rows
    assert frequency[[0, 2, 3]].sum() == 0
    assert torch.allclose(frequency, expected, atol=0.015), (frequency, expected)


def test_rows_short_of_allowed_weight_fall_back_and_too_few_items_are_refused() -> None:
    weights = torch.ones(1001)
    weights[1] = 1e7  # almost every draw is item 1, which every user has seen
    seen = torch.zeros(4, 1001, dtype=torch.bool)
    seen[:, 1] = True
    target = torch.tensor([2, 3, 4, 5])
    negatives = sample_negatives(seen, target, 5, weights, torch.Generator().manual_seed(0))
    assert not seen.gather(1, negatives).any() and (negatives != target[:, None]).all()
    assert (negatives.sort(1).values.diff(dim=1) != 0).all()
    seen[0, 6:] = True  # user 0 has items 3, 4, 5 left (2 is the target)
    with pytest.raises(ValueError, match="only 3 items"):
        sample_negatives(seen, target, 5, None, torch.Generator().manual_seed(0))


# --- torchmetrics agreement ------------------------------------------------------------------


@pytest.mark.parametrize("ties", [False, True])
def test_sampled_ranks_agree_with_torchmetrics(ties: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    users, candidates, ks = 40, 101, (1, 5, 10)
    scores = torch.rand(users, candidates, generator=generator)
    if ties:
        scores = (scores * 6).floor()  # many ties: torchmetrics' NDCG averages over them
    # column 0 is the target; the other 100 are its negatives
    higher, equal = target_rank(scores, torch.zeros(users, dtype=torch.long),
                                candidates=torch.arange(1, candidates).expand(users, -1))
    ours = ranking_metrics(higher, equal, ks)
    relevant = torch.zeros(candidates, dtype=torch.bool)
    relevant[0] = True
    for k in ks:
        ndcg = torch.stack([retrieval_normalized_dcg(s, relevant, top_k=k) for s in scores])
        assert torch.allclose(ours[f"NDCG@{k}"].float(), ndcg, atol=1e-6)
        if not ties:  # torchmetrics' hit rate breaks ties by sort order, ours in expectation
            hit = torch.stack([retrieval_hit_rate(s, relevant, top_k=k) for s in scores])
            assert torch.equal(ours[f"HR@{k}"].float(), hit)


def test_evaluate_ranking_agrees_with_torchmetrics_end_to_end() -> None:
    seqs = random_sequences(num_users=30)
    score_fn = history_scorer(seqs.num_items)
    ks = (5, 20)
    result = evaluate_ranking(score_fn, seqs, history_length=8, ks=ks, num_negatives=50,
                              seed=7, chunk_size=8)
    users = torch.arange(seqs.num_users)
    inputs = leave_one_out_inputs(seqs, 8, users=users)
    scores = score_fn(inputs.history, inputs.history_response, inputs.history_watch_time).float()
    excluded = seen_mask(seqs, users)
    negatives = {  # the same draws as evaluate_ranking: seeds seed * 3 + protocol index
        "sampled_uniform_50": _sample_all_negatives(seqs, users, "test", 50, None, 7 * 3 + 1),
        "sampled_popularity_50": _sample_all_negatives(seqs, users, "test", 50,
                                                       popularity_scores(seqs), 7 * 3 + 2),
    }
    for key, metrics in result.items():
        assert set(metrics) == {"HR@5", "NDCG@5", "HR@20", "NDCG@20"}
        for k in ks:
            hits, gains = [], []
            for u in range(seqs.num_users):
                if key == "full":
                    items = (~excluded[u]).nonzero().squeeze(1)
                else:
                    items = torch.cat([inputs.target[u : u + 1], negatives[key][u]])
                relevant = items == inputs.target[u]
                hits.append(retrieval_hit_rate(scores[u, items], relevant, top_k=k))
                gains.append(retrieval_normalized_dcg(scores[u, items], relevant, top_k=k))
            assert metrics[f"HR@{k}"] == pytest.approx(torch.stack(hits).mean().item(), abs=1e-6)
            assert metrics[f"NDCG@{k}"] == pytest.approx(torch.stack(gains).mean().item(),
                                                         abs=1e-6)


# --- whole protocols --------------------------------------------------------------------------


def test_oracle_is_perfect_and_a_constant_scorer_is_not() -> None:
    seqs = random_sequences()
    all_inputs = leave_one_out_inputs(seqs, 6)

    def oracle(history, response, watch_time):
        row = (history[:, None, :] == all_inputs.history[None]).all(-1).float().argmax(1)
        scores = torch.zeros(history.shape[0], seqs.num_items + 1)
        scores[torch.arange(history.shape[0]), all_inputs.target[row]] = 1.0
        return scores

    perfect = evaluate_ranking(oracle, seqs, history_length=6, chunk_size=16)
    assert set(perfect) == {"full", "sampled_uniform_100", "sampled_popularity_100"}
    for metrics in perfect.values():
        assert metrics == {"HR@10": 1.0, "NDCG@10": 1.0, "HR@20": 1.0, "NDCG@20": 1.0}

    constant = evaluate_ranking(lambda h, r, w: torch.zeros(h.shape[0], seqs.num_items + 1),
                                seqs, history_length=6)
    candidates = (~seen_mask(seqs, torch.arange(seqs.num_users))).sum(1).double()
    assert constant["full"]["HR@10"] == pytest.approx((10 / candidates).mean().item())
    assert constant["full"]["HR@10"] < 0.1
    assert constant["sampled_uniform_100"]["HR@10"] == pytest.approx(10 / 101)


def test_chunk_size_does_not_change_the_numbers() -> None:
    seqs = random_sequences()
    score_fn = history_scorer(seqs.num_items)
    one = evaluate_ranking(score_fn, seqs, history_length=5, chunk_size=1, seed=3)
    many = evaluate_ranking(score_fn, seqs, history_length=5, chunk_size=1000, seed=3)
    assert one.keys() == many.keys()
    for key in one:
        assert one[key] == pytest.approx(many[key], rel=1e-12, abs=1e-15)
    reseeded = evaluate_ranking(score_fn, seqs, history_length=5, seed=4)
    assert reseeded["full"] == pytest.approx(one["full"], rel=1e-12)  # no randomness in full
    assert reseeded["sampled_uniform_100"] != one["sampled_uniform_100"]


def test_protocols_are_labelled_and_checked() -> None:
    assert describe_protocol("full") == PROTOCOL_DESCRIPTIONS["full"]
    assert "among 100 uniformly" in describe_protocol("sampled_uniform_100")
    assert "among 50 negatives sampled proportionally" in describe_protocol(
        "sampled_popularity_50")
    seqs = make_sequences(TOY_ROWS, 6)
    with pytest.raises(ValueError, match="unknown protocols"):
        evaluate_ranking(most_popular_scorer(seqs), seqs, history_length=2, protocols=("loo",))
    with pytest.raises(ValueError, match="expected"):
        evaluate_ranking(lambda h, r, w: torch.zeros(h.shape[0], 6), seqs, history_length=2,
                         protocols=("full",))


def test_popularity_counts_only_the_training_part() -> None:
    seqs = make_sequences(TOY_ROWS, 6)
    # training parts: [1, 2], [5, 1, 6], [2]; validation and test items are left out
    assert popularity_scores(seqs).tolist() == [0.0, 2.0, 2.0, 0.0, 0.0, 1.0, 1.0]
    scores = most_popular_scorer(seqs)(torch.zeros(2, 3, dtype=torch.long), None, None)
    assert scores.shape == (2, 7) and scores[1].tolist() == [0.0, 2.0, 2.0, 0.0, 0.0, 1.0, 1.0]


def test_log_popularity_counts_whole_sequences_of_the_chosen_users() -> None:
    seqs = make_sequences(TOY_ROWS, 6)
    users = torch.tensor([True, False, True])  # users 0 and 2: 1 2 3 4 and 2 4 6
    assert log_popularity(seqs, users).tolist() == [0.0, 1.0, 2.0, 1.0, 2.0, 0.0, 1.0]


@needs_ml100k
def test_most_popular_on_movielens_100k_is_in_the_published_range(tmp_path) -> None:
    seqs = load_sequences(ML100K, "ml-100k", PreprocessConfig(), cache_dir=tmp_path)
    result = evaluate_ranking(most_popular_scorer(seqs), seqs, history_length=10)
    for key, metrics in result.items():
        print(key, {name: round(value, 4) for name, value in metrics.items()})
    # measured: full 0.0854, sampled uniform 0.3621, sampled popularity 0.1516 (HR@10)
    assert 0.06 < result["full"]["HR@10"] < 0.11
    assert 0.30 < result["sampled_uniform_100"]["HR@10"] < 0.42
    assert 0.12 < result["sampled_popularity_100"]["HR@10"] < 0.19
    assert result["full"]["NDCG@10"] < result["full"]["HR@10"] < result["full"]["HR@20"]
