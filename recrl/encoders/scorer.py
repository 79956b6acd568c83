"""Catalogue scoring tied to an encoder's item table: ``score(s, a) = <W s, e_a> + b_a``.

Not part of any encoder: DQN's Q-network, PPO's policy and the pretraining heads all score the
catalogue this way on top of whichever `HistoryEncoderBase` reads the history.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.encoders.base import HistoryEncoderBase


class ItemScorer(nn.Module):
    """Scores every catalogue item for a state: ``score(s, a) = <W s, e_a> + b_a``.

    The item vectors are the encoder's own (tied, as BERT4Rec ties its output layer), so one
    matrix product scores the whole catalogue and item knowledge learnt on the input side is
    reused.
    The bias ``b_a`` lets an item's value independent of the user (e.g. its quality) be learnt
    directly. Masking is left to the policy (TorchRL's ``action_mask_key``).
    """

    def __init__(self, encoder: HistoryEncoderBase) -> None:
        super().__init__()
        hidden_size = encoder.hidden_size
        self.item_vectors = encoder.item_vectors  # a bound method: no second copy of the table
        self.query = nn.Linear(hidden_size, hidden_size)
        if encoder.item_ids:
            self.item_bias = nn.Parameter(torch.zeros(encoder.num_items + 1))
            self.feature_bias = None
        else:  # items are their features: so is their bias
            self.item_bias = None
            self.feature_bias = nn.Linear(encoder.item_features.shape[1], 1, bias=False)
            self._item_features = encoder.feature_matrix  # bound: follows the buffer across devices
        #: Whether this scorer starts from a pretrained head (``encoder.init_scorer``).
        self.from_pretrained = encoder.pretrained_scorer is not None and encoder.item_ids
        if self.from_pretrained:
            # Start from the pretrained head (the same function of the state).
            self.load_state_dict(encoder.pretrained_scorer)

    @torch.no_grad()
    def scale_(self, factor: float) -> ItemScorer:
        """Multiplies every score by ``factor`` (in place): the scorer's own weights, not the
        shared item table, which the encoder reads too."""
        biases = self.item_bias if self.item_bias is not None else self.feature_bias.weight
        for weight in (self.query.weight, self.query.bias, biases):
            weight.mul_(factor)
        return self

    def biases(self) -> Tensor:
        """``b_a`` of every item, ``[N+1]``."""
        if self.item_bias is not None:
            return self.item_bias
        return self.feature_bias(self._item_features()).squeeze(-1)

    def forward(self, state: Tensor) -> Tensor:
        """``state`` ``[..., H]`` -> scores ``[..., N+1]`` (index 0 is padding)."""
        return self.query(state) @ self.item_vectors().T + self.biases()

    def score_items(self, state: Tensor, items: Tensor) -> Tensor:
        """Scores of given items only: ``state`` ``[..., H]``, ``items`` ``[...]`` -> ``[...]``."""
        item_vectors = F.embedding(items, self.item_vectors())  # [..., H]
        return (self.query(state) * item_vectors).sum(-1) + self.biases()[items]


class RepeatBias(nn.Module):
    """A learnt score offset for every item still in the visible history, one per position.

    Where showing an item again matters (a user who leaves on repeats, a shop where people buy
    again), the policy needs ``score(s, a)`` to depend on whether ``a`` is in the window. A
    state vector can only express that through ``<W s, e_a>`` for every window item at once,
    which 300-plus items in a 64-dim space make slow to learn; ``L`` scalars (starting at 0, so
    a new module scores exactly as before) make it one step of gradient away. An item twice in
    the window gets both offsets.
    """

    def __init__(self, history_length: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(history_length))

    def forward(self, scores: Tensor, history: Tensor) -> Tensor:
        """``scores`` ``[..., N+1]`` plus the offsets of ``history`` ``[..., L]``'s items."""
        offsets = self.weight.expand_as(history).to(scores.dtype)
        return scores.scatter_add(-1, history, offsets)


class ScoreWithHistory(nn.Module):
    """``ItemScorer`` plus `RepeatBias`: scores from a state and the history it came from."""

    def __init__(self, scorer: ItemScorer, repeat_bias: RepeatBias) -> None:
        super().__init__()
        self.scorer = scorer
        self.repeat_bias = repeat_bias

    def forward(self, state: Tensor, history: Tensor) -> Tensor:
        return self.repeat_bias(self.scorer(state), history)


class HistoryScorer(nn.Module):
    """Encoder + scorer: the whole map from an observed history to one score per item.

    With ``state_value`` the scores are ``V(s) + score(s, a)`` (a dueling architecture, Wang et
    al. 2016): how good the user's state is, which varies a lot, is learnt by one head, and the
    item scores only have to learn how items differ, which is what decides the action.

    With ``repeat_bias`` the scores of items in the window get `RepeatBias`'s learnt offsets.
    """

    def __init__(self, encoder: HistoryEncoderBase, state_value: bool = False,
                 repeat_bias: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.scorer = ItemScorer(encoder)
        self.state_value = nn.Linear(encoder.hidden_size, 1) if state_value else None
        self.repeat_bias = RepeatBias(encoder.history_length) if repeat_bias else None

    def forward(self, history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        state = self.encoder(history, response, watch_time)  # [..., H]
        scores = self.scorer(state)  # [..., N+1]
        if self.repeat_bias is not None:
            scores = self.repeat_bias(scores, history)
        if self.state_value is not None:
            scores = scores + self.state_value(state)
        return scores
