"""The history encoders (BERT, GRU) and the tied catalogue scorer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from recrl.encoders import HistoryEncoder, HistoryEncoderBase, HistoryScorer
from recrl.encoders.gru import GRUEncoder
from tests.conftest import SHORT_SESSIONS, run_recrl_in_process

N_ITEMS, L = 50, 6
BERT_SHAPE = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
#: Every encoder the shared tests run on, built with 32-wide states.
ENCODERS = {
    "bidirectional": lambda: HistoryEncoder(N_ITEMS, L, **BERT_SHAPE),
    "causal": lambda: HistoryEncoder(N_ITEMS, L, **BERT_SHAPE, causal=True),
    "gru": lambda: GRUEncoder(N_ITEMS, L, hidden_size=32),
}


def make_inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    history = torch.randint(1, N_ITEMS + 1, (batch, L), generator=g)
    response = torch.randint(1, 3, (batch, L), generator=g)
    watch_time = torch.rand(batch, L, generator=g) * 4 * (response == 2)
    return history, response, watch_time


@pytest.fixture(params=list(ENCODERS))
def encoder(request: pytest.FixtureRequest) -> HistoryEncoderBase:
    torch.manual_seed(0)
    return ENCODERS[request.param]().eval()


def test_shapes_over_any_leading_dims(encoder: HistoryEncoderBase) -> None:
    history, response, watch_time = make_inputs(12)
    assert encoder(history, response, watch_time).shape == (12, 32)
    nested = [t.reshape(3, 4, L) for t in (history, response, watch_time)]
    state = encoder(*nested)
    assert state.shape == (3, 4, 32)
    torch.testing.assert_close(state.reshape(12, 32), encoder(history, response, watch_time))
    scores = HistoryScorer(encoder)(history, response, watch_time)
    assert scores.shape == (12, N_ITEMS + 1)


@pytest.mark.parametrize("causal", [False, True])
def test_uses_sdpa_attention(causal: bool) -> None:
    encoder = HistoryEncoder(N_ITEMS, L, **BERT_SHAPE, causal=causal)
    assert encoder.bert.config._attn_implementation == "sdpa"


def test_padding_is_ignored(encoder: HistoryEncoderBase) -> None:
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


def test_empty_history_gives_a_finite_state(encoder: HistoryEncoderBase) -> None:
    zeros = torch.zeros(2, L, dtype=torch.long)
    state = encoder(zeros, zeros, torch.zeros(2, L))
    assert torch.isfinite(state).all()


def test_state_depends_on_responses(encoder: HistoryEncoderBase) -> None:
    history, response, watch_time = make_inputs(4)
    flipped = 3 - response  # clicked <-> skipped
    assert not torch.allclose(encoder(history, response, watch_time),
                              encoder(history, flipped, watch_time))


def test_scorer_is_tied_to_the_item_table(encoder: HistoryEncoderBase) -> None:
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


def test_score_items_matches_full_scores(encoder: HistoryEncoderBase) -> None:
    scorer = HistoryScorer(encoder).scorer
    state = encoder(*make_inputs(4))
    items = torch.tensor([1, 7, 50, 3])
    torch.testing.assert_close(scorer.score_items(state, items),
                               scorer(state).gather(-1, items[:, None]).squeeze(-1))


def test_dueling_value_shifts_every_item_equally(encoder: HistoryEncoderBase) -> None:
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


# -- the GRU encoder (recrl/encoders/gru.py) -------------------------------------------------------
def gru_encoder(**kwargs) -> GRUEncoder:
    torch.manual_seed(0)
    return GRUEncoder(N_ITEMS, L, hidden_size=32, **kwargs).eval()


def test_gru_reads_only_the_past_and_its_state_reads_everything() -> None:
    """A recurrent network is causal: changing the item at window position j changes the
    outputs at j and after, never before, and the state (the most recent position's output)
    depends on the oldest item too."""
    encoder = gru_encoder(num_layers=2)
    assert encoder.causal and encoder.state_position == -1
    history, response, watch_time = make_inputs(3)
    j = 3
    changed = history.clone()
    changed[:, j] = history[:, j] % N_ITEMS + 1

    def outputs(items: torch.Tensor) -> torch.Tensor:  # [3, L+1, H], the state token's first
        return encoder.contextualise(encoder.embed_tokens(items, response, watch_time), items)

    before, after = outputs(history), outputs(changed)
    torch.testing.assert_close(after[:, : j + 1], before[:, : j + 1])  # state token + items < j
    assert not torch.allclose(after[:, j + 1], before[:, j + 1])
    torch.testing.assert_close(encoder(history, response, watch_time), before[:, -1])
    oldest = history.clone()
    oldest[:, 0] = history[:, 0] % N_ITEMS + 1
    assert not torch.allclose(encoder(oldest, response, watch_time),
                              encoder(history, response, watch_time))


def test_gru_skips_padding_wherever_it_is() -> None:
    """The GRU steps over real items only: a left-padded window has the state of the same items
    without the padding, padding in the middle of a window is skipped too, and an empty history's
    state is the state token's output."""
    encoder = gru_encoder()
    history, response, watch_time = make_inputs(4)
    for t in (history, response, watch_time):
        t[:, :2] = 0  # left padding
    unpadded = encoder(history[:, 2:], response[:, 2:], watch_time[:, 2:])
    torch.testing.assert_close(encoder(history, response, watch_time), unpadded)
    items = [t[:, 2:] for t in (history, response, watch_time)]  # [4, 4] each, no padding
    gapped = [torch.zeros(4, L, dtype=t.dtype) for t in items]  # [4, L]: pad, item, pad, items
    for full, part in zip(gapped, items):
        full[:, [1, 3, 4, 5]] = part
    torch.testing.assert_close(encoder(*gapped), unpadded)
    empty = torch.zeros(2, L, dtype=torch.long)
    state = encoder(empty, empty, torch.zeros(2, L))
    tokens = encoder.embed_tokens(empty, empty, torch.zeros(2, L))
    torch.testing.assert_close(state, encoder.contextualise(tokens, empty)[:, 0])


def test_gru_keeps_the_shared_tables_and_loads_from_a_checkpoint(tmp_path: Path) -> None:
    """Its own parameters sit beside the base class's tables, and ``init_from`` reads a
    checkpoint of the same encoder (what ``algo=pretrain`` writes under ``encoder.``)."""
    encoder = gru_encoder()
    names = {name.split(".")[0] for name in encoder.state_dict()}
    assert names == {"input_norm", "gru", "item_embedding", "response_embedding",
                     "watch_time_projection", "state_token"}
    head = HistoryScorer(encoder).scorer
    path = tmp_path / "pretrained.pt"
    torch.save({**{f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                **{f"next_item_head.{k}": v for k, v in head.state_dict().items()}}, path)
    torch.manual_seed(1)
    loaded = GRUEncoder(N_ITEMS, L, hidden_size=32, init_from=str(path))
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value)
    assert loaded.pretrained_scorer_head == "next_item"
    with pytest.raises(ValueError, match="does not fit"):
        GRUEncoder(N_ITEMS, L, hidden_size=16, init_from=str(path))


def test_gru_learns_the_next_item() -> None:
    """A few Adam steps on a learnable rule (the next item is the last one + 1) lower the
    next-item cross-entropy a lot: gradients reach the GRU and the tied item table."""
    torch.manual_seed(0)
    encoder = GRUEncoder(N_ITEMS, L, hidden_size=32)
    scorer = HistoryScorer(encoder)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.03)
    g = torch.Generator().manual_seed(0)
    start = torch.randint(1, N_ITEMS - L, (256,), generator=g)
    history = start[:, None] + torch.arange(L)  # [256, L], consecutive items
    history[:64, :2] = 0  # some left padding too
    response = torch.where(history != 0, 2, 0)
    watch_time = (response == 2).float()
    target = history[:, -1] + 1  # [256]
    losses = []
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(scorer(history, response, watch_time), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0]
    assert all(p.grad is not None for p in encoder.gru.parameters())


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_gru_trains_through_the_entry_point(tmp_path: Path, algo: str) -> None:
    """``python -m recrl.run encoder=gru debug=smoke`` (and with ``algo=ppo``) runs to the end."""
    assert run_recrl_in_process(tmp_path, "encoder=gru", "debug=smoke", SHORT_SESSIONS,
                                f"algo={algo}") is None
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["optimizer_steps"] == 20
    assert math.isfinite(results["agent"]["return_mean"])
    saved = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert "encoder.gru.weight_hh_l0" in saved["state_dict"]  # the GRU is what was trained


def test_repeat_bias_offsets_exactly_the_items_in_the_window() -> None:
    """Offsets by position, summed for an item shown twice; zero offsets change nothing."""
    from recrl.encoders import RepeatBias

    bias = RepeatBias(history_length=3)
    scores = torch.zeros(2, 6)
    history = torch.tensor([[0, 2, 5], [4, 4, 1]])  # user 2 saw item 4 twice
    assert torch.equal(bias(scores, history), scores)  # a new module scores as before
    with torch.no_grad():
        bias.weight.copy_(torch.tensor([-1.0, -2.0, -4.0]))
    out = bias(scores, history)
    # User 1: item 2 at position 1 (-2), item 5 at position 2 (-4); padding id 0 gets -1.
    assert out[0].tolist() == [-1.0, 0.0, -2.0, 0.0, 0.0, -4.0]
    # User 2: item 4 at positions 0 and 1 (-1 - 2), item 1 at position 2 (-4).
    assert out[1].tolist() == [0.0, -4.0, 0.0, 0.0, -3.0, 0.0]
    nested = bias(torch.zeros(1, 2, 6), history[None])
    assert torch.equal(nested[0], out)


def test_history_scorer_with_repeat_bias_learns_to_avoid_window_items() -> None:
    """A few gradient steps on "items in the window score low" move the offsets, not the state."""
    torch.manual_seed(0)
    encoder = HistoryEncoder(N_ITEMS, L, **BERT_SHAPE)
    scorer = HistoryScorer(encoder, repeat_bias=True)
    history, response, watch_time = make_inputs(32)
    in_window = torch.zeros(32, N_ITEMS + 1).scatter(1, history, 1.0)
    optimizer = torch.optim.Adam([scorer.repeat_bias.weight], lr=0.5)
    for _ in range(20):
        scores = scorer(history, response, watch_time)
        loss = (scores * in_window).mean() - (scores * (1 - in_window)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = scorer(history, response, watch_time)
    assert (scores.gather(1, history).max(dim=1).values
            < scores.masked_fill(in_window.bool(), float("-inf"))[:, 1:].max(dim=1).values).all()
    assert "repeat_bias.weight" in scorer.state_dict()
    assert "repeat_bias.weight" not in HistoryScorer(encoder).state_dict()
