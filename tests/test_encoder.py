"""The BERT history encoder and the tied catalogue scorer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from recrl.encoders import HistoryEncoder, HistoryScorer

N_ITEMS, L = 50, 6


def make_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(1, N_ITEMS + 1, (batch, L), generator=g)
    response = torch.randint(1, 3, (batch, L), generator=g)
    watch_time = torch.rand(batch, L, generator=g) * 4 * (response == 2)
    return history, response, watch_time


@pytest.fixture(params=[False, True], ids=["bidirectional", "causal"])
def encoder(request: pytest.FixtureRequest) -> HistoryEncoder:
    torch.manual_seed(0)
    return HistoryEncoder(N_ITEMS, L, hidden_size=32, num_layers=1, num_heads=2,
                          intermediate_size=64, causal=request.param).eval()


def test_shapes_over_any_leading_dims(encoder: HistoryEncoder) -> None:
    history, response, watch_time = make_inputs(12)
    assert encoder(history, response, watch_time).shape == (12, 32)
    nested = [t.reshape(3, 4, L) for t in (history, response, watch_time)]
    state = encoder(*nested)
    assert state.shape == (3, 4, 32)
    torch.testing.assert_close(state.reshape(12, 32), encoder(history, response, watch_time))
    scores = HistoryScorer(encoder)(history, response, watch_time)
    assert scores.shape == (12, N_ITEMS + 1)


def test_uses_sdpa_attention(encoder: HistoryEncoder) -> None:
    assert encoder.bert.config._attn_implementation == "sdpa"


def test_padding_is_ignored(encoder: HistoryEncoder) -> None:
    """Left-padded positions must not change the state, whatever junk their other fields hold."""
    history, response, watch_time = make_inputs(4)
    history[:, :3] = 0  # the first 3 positions are padding
    response[:, :3] = 0
    watch_time[:, :3] = 0
    reference = encoder(history, response, watch_time)
    junk_response = response.clone()
    junk_response[:, :3] = 2
    junk_watch = watch_time.clone()
    junk_watch[:, :3] = 3.0
    torch.testing.assert_close(encoder(history, junk_response, junk_watch), reference)


def test_causal_positions_read_only_themselves_and_the_past() -> None:
    """SASRec's attention: changing the item at position j changes the outputs at j and after,
    never before; the state (the most recent position) reads the whole window, the first item
    included. Bidirectional attention changes every output."""
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    causal = HistoryEncoder(N_ITEMS, L, **shape, causal=True).eval()
    bidirectional = HistoryEncoder(N_ITEMS, L, **shape).eval()
    history, response, watch_time = make_inputs(3)
    history[0, :2] = 0  # a left-padded row too
    response[0, :2] = 0
    watch_time[0, :2] = 0
    j = 3
    changed = history.clone()
    changed[:, j] = history[:, j] % N_ITEMS + 1  # another item at window position j

    def outputs(model: HistoryEncoder, items: torch.Tensor) -> torch.Tensor:
        return model.contextualise(model.embed_tokens(items, response, watch_time), items)

    before, after = outputs(causal, history), outputs(causal, changed)  # [3, L+1, H]
    assert torch.isfinite(before).all()
    torch.testing.assert_close(after[:, : j + 1], before[:, : j + 1])  # state token + items < j
    assert not torch.allclose(after[:, j + 1], before[:, j + 1])  # the changed position itself
    assert causal.state_position == -1 and bidirectional.state_position == 0
    torch.testing.assert_close(causal(history, response, watch_time), before[:, -1])
    first = history.clone()
    first[1:, 0] = history[1:, 0] % N_ITEMS + 1  # the oldest item of the unpadded rows
    assert not torch.allclose(causal(first, response, watch_time)[1:],
                              causal(history, response, watch_time)[1:])
    assert not torch.allclose(outputs(bidirectional, changed)[:, 0],
                              outputs(bidirectional, history)[:, 0])


def test_empty_history_gives_a_finite_state(encoder: HistoryEncoder) -> None:
    zeros = torch.zeros(2, L, dtype=torch.long)
    state = encoder(zeros, zeros, torch.zeros(2, L))
    assert torch.isfinite(state).all()


def test_state_depends_on_responses(encoder: HistoryEncoder) -> None:
    history, response, watch_time = make_inputs(4)
    flipped = 3 - response  # clicked <-> skipped
    assert not torch.allclose(encoder(history, response, watch_time),
                              encoder(history, flipped, watch_time))


def test_scorer_is_tied_to_the_item_table(encoder: HistoryEncoder) -> None:
    scorer = HistoryScorer(encoder)
    history, response, watch_time = make_inputs(3)
    state = encoder(history, response, watch_time)
    expected = scorer.scorer.query(state) @ encoder.item_embedding.weight.T + scorer.scorer.item_bias
    torch.testing.assert_close(scorer(history, response, watch_time), expected)
    # One table: a change to the encoder's item embedding changes the scores.
    with torch.no_grad():
        encoder.item_embedding.weight[5] += 1.0
    assert not torch.allclose(scorer(history, response, watch_time)[:, 5], expected[:, 5])
    assert len(list(scorer.parameters())) == len(set(map(id, scorer.parameters())))


def test_score_items_matches_full_scores(encoder: HistoryEncoder) -> None:
    scorer = HistoryScorer(encoder).scorer
    state = encoder(*make_inputs(4))
    items = torch.tensor([1, 7, 50, 3])
    torch.testing.assert_close(scorer.score_items(state, items),
                               scorer(state).gather(-1, items[:, None]).squeeze(-1))


def test_dueling_value_shifts_every_item_equally(encoder: HistoryEncoder) -> None:
    dueling = HistoryScorer(encoder, state_value=True)
    inputs = make_inputs(4)
    state = encoder(*inputs)
    shift = dueling.state_value(state)  # [B, 1]
    torch.testing.assert_close(dueling(*inputs) - dueling.scorer(state), shift.expand(-1, N_ITEMS + 1))


def test_item_features_make_items_of_one_topic_alike() -> None:
    """With features, an item's vector is its id embedding plus a projection of its features."""
    torch.manual_seed(0)
    features = torch.zeros(N_ITEMS + 1, 4)
    features[1:, :] = torch.nn.functional.one_hot(torch.arange(N_ITEMS) % 4, 4).float()
    encoder = HistoryEncoder(N_ITEMS, L, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, item_features=features)
    vectors = encoder.item_vectors()
    expected = encoder.item_embedding.weight + features @ encoder.feature_projection.weight.T
    torch.testing.assert_close(vectors, expected)
    torch.testing.assert_close(vectors[0], torch.zeros(32))  # padding stays zero
    with pytest.raises(ValueError, match="item_features"):
        HistoryEncoder(N_ITEMS, L, item_features=torch.zeros(N_ITEMS, 4))


@pytest.mark.parametrize("causal", [False, True])
def test_loads_local_pretrained_bert(tmp_path: Path, causal: bool) -> None:
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=96, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(tmp_path)
    saved = BertModel.from_pretrained(tmp_path, add_pooling_layer=False)
    encoder = HistoryEncoder(N_ITEMS, L, pretrained_path=str(tmp_path), causal=causal)
    assert encoder.hidden_size == 48
    assert encoder.bert.config.is_decoder is causal  # the saved config is bidirectional
    torch.testing.assert_close(
        encoder.bert.encoder.layer[1].output.dense.weight, saved.encoder.layer[1].output.dense.weight
    )
    assert encoder(*make_inputs(2)).shape == (2, 48)


def test_rejects_a_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pretrained_path"):
        HistoryEncoder(N_ITEMS, L, pretrained_path=str(tmp_path))


@pytest.mark.parametrize(("kwargs", "name"), [
    ({"num_items": 0}, "num_items"),
    ({"history_length": 0}, "history_length"),
    ({"hidden_size": 30, "num_heads": 4}, "num_heads"),
])
def test_rejects_invalid_shapes(kwargs: dict, name: str) -> None:
    args = {"num_items": N_ITEMS, "history_length": L, **kwargs}
    with pytest.raises(ValueError, match=name):
        HistoryEncoder(**args)


def test_items_described_by_features_alone() -> None:
    features = torch.zeros(N_ITEMS + 1, 4)
    features[1:, :] = torch.nn.functional.one_hot(torch.arange(N_ITEMS) % 4, 4).float()
    encoder = HistoryEncoder(N_ITEMS, L, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, item_features=features, item_ids=False)
    scorer = HistoryScorer(encoder)
    scores = scorer(*make_inputs(3))
    torch.testing.assert_close(scores[:, 1], scores[:, 5])  # items 1 and 5 share feature 0
    assert not torch.allclose(scores[:, 1], scores[:, 2])
    with pytest.raises(ValueError, match="item_ids"):
        HistoryEncoder(N_ITEMS, L, item_ids=False)
