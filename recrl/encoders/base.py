"""What every history encoder shares, whatever network reads the history (its *backbone*).

A history is a sequence of (recommended item, user response, watch time) triples
(`recrl.observation`). Each position becomes one token, ``item vector + response embedding +
projected watch time``, where an item's vector comes from the item table (an id embedding and/or
a projection of the environment's item features). A learnt *state token* is put in front of the
tokens, so a user with an empty history (just reset) still has one token to read, and the
backbone turns the ``L+1`` tokens into ``L+1`` outputs. The user's state is the output at
`HistoryEncoderBase.state_position`: the state token's (a backbone that reads both directions,
like BERT's ``[CLS]``) or the most recent position's (a backbone that reads only the past, the
only output that has read the whole window).

The item table is shared with `recrl.encoders.scorer.ItemScorer` (tied input and output item
vectors), and every encoder can start from an ``algo=pretrain`` checkpoint (``init_from``).
A backbone subclass only builds its modules and implements `HistoryEncoderBase._backbone`.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recrl.encoders.pretrained import AUTO_HEAD, PRETRAINED_HEADS, load_pretrained
from recrl.observation import NUM_RESPONSE_CODES, PADDING_ITEM

log = logging.getLogger(__name__)


class HistoryEncoderBase(nn.Module, abc.ABC):
    """Encodes ``[..., L]`` histories into ``[..., hidden_size]`` user states.

    Args:
        num_items: catalogue size N; item ids are ``1..N`` and ``0`` is padding.
        history_length: L, the number of past recommendations the encoder sees.
        hidden_size: the width of tokens, backbone outputs and states.
        backbone: the subclass's modules, by attribute name, built *before* this call. They are
            registered first, in this order, so a backbone's parameters are created and listed
            before the shared tables: the order of saved checkpoints (optimiser states are
            matched by position) and of a seeded run's random draws.
        causal: whether the backbone reads only the past (each output depends on its own and
            earlier tokens): the user's state is then the most recent position's output, and
            ``algo=pretrain algo.objective=causal`` can train every position. A checkpoint
            pretrained with the other kind of reading is refused (``init_from``).
        item_features: public catalogue metadata ``[N+1, F]`` from the environment (e.g. topics),
            or None. An item's vector is then its id embedding plus a learnt projection of its
            features, so what is learnt about one item carries over to items like it.
        item_ids: learn an embedding per item id. False (only with ``item_features``) describes
            items by their features alone: far fewer parameters, but items that share features
            become indistinguishable (on the synthetic simulator DQN did worse this way).
        init_from: a checkpoint of ``algo=pretrain`` (``lightning_modules/pretrain.py``) to start
            from: every encoder weight is loaded, and the head named by ``init_scorer`` is kept in
            ``pretrained_scorer`` for the `ItemScorer` built on this encoder. The encoder's kind,
            shape, catalogue and item features must match.
        init_scorer: with ``init_from``, which pretrained head the policy's item scorer starts
            from: ``"rating"`` (the predicted rating of each item: a myopic reward estimate),
            ``"next_item"`` (how likely each item comes next), ``"auto"`` (the rating head where
            the checkpoint has one, else the next-item head: logs without ratings train no
            rating head), or None (the encoder only; the scorer starts from scratch; False means
            the same, True ``"next_item"``). ``pretrained_scorer_head`` says which was loaded.
    """

    def __init__(
        self,
        num_items: int,
        history_length: int,
        hidden_size: int,
        *,
        backbone: Mapping[str, nn.Module],
        causal: bool,
        item_features: Tensor | None = None,
        item_ids: bool = True,
        init_from: str | None = None,
        init_scorer: str | bool | None = "auto",
    ) -> None:
        super().__init__()
        self.check_arguments(num_items, history_length, item_features, item_ids, init_scorer)
        init_scorer = _head_choice(init_scorer)
        self.causal = causal
        for name, module in backbone.items():
            self.add_module(name, module)
        self.hidden_size = hidden_size
        self.num_items = num_items
        self.history_length = history_length
        self.item_ids = item_ids
        self.item_embedding = (
            nn.Embedding(num_items + 1, hidden_size, padding_idx=PADDING_ITEM) if item_ids else None
        )
        self.response_embedding = nn.Embedding(NUM_RESPONSE_CODES, hidden_size)
        self.watch_time_projection = nn.Linear(1, hidden_size)
        self.state_token = nn.Parameter(torch.zeros(hidden_size))
        if item_features is not None:
            if item_features.shape[0] != num_items + 1:
                raise ValueError(
                    f"item_features has {item_features.shape[0]} rows, expected num_items + 1 = "
                    f"{num_items + 1} (row 0 is padding)"
                )
            self.register_buffer("item_features", item_features.detach().float().clone())
            self.feature_projection = nn.Linear(item_features.shape[1], hidden_size, bias=False)
        else:
            self.item_features = None
            self.feature_projection = None
        if self.item_embedding is not None:
            nn.init.normal_(self.item_embedding.weight, std=0.02)
            with torch.no_grad():
                self.item_embedding.weight[PADDING_ITEM] = 0.0  # padding stays a zero vector
        nn.init.normal_(self.state_token, std=0.02)
        #: The pretrained head's weights, for `ItemScorer` (None without init_from), and which
        #: head of `PRETRAINED_HEADS` they are.
        self.pretrained_scorer: dict[str, Tensor] | None = None
        self.pretrained_scorer_head: str | None = None
        if init_from is not None:
            self._load_pretrained(init_from, init_scorer)

    @staticmethod
    def check_arguments(num_items: int, history_length: int, item_features: Tensor | None,
                        item_ids: bool, init_scorer: str | bool | None) -> None:
        """Raises a ValueError for invalid shared arguments. `__init__` calls it; a backbone that
        is costly to build calls it first, to fail before building."""
        if not item_ids and item_features is None:
            raise ValueError(
                "encoder.item_ids=false needs item features from the environment (e.g. "
                "env.observe_topics=true): items would have no representation at all"
            )
        if num_items < 1:
            raise ValueError(f"encoder: num_items must be >= 1, got {num_items}")
        if history_length < 1:
            raise ValueError(f"encoder: history_length must be >= 1, got {history_length}")
        _head_choice(init_scorer)

    def _load_pretrained(self, init_from: str, init_scorer: str | None) -> None:
        """Loads ``init_from``'s encoder weights into this encoder and keeps its head."""
        encoder_state, self.pretrained_scorer, self.pretrained_scorer_head = load_pretrained(
            init_from, init_scorer, self.causal)
        if init_scorer == AUTO_HEAD:
            log.info("encoder.init_scorer=auto: the policy's scorer starts from the %s head "
                     "of %s", self.pretrained_scorer_head, init_from)
        try:
            self.load_state_dict(encoder_state)
        except RuntimeError as err:
            raise ValueError(
                f"encoder.init_from={init_from}: the checkpoint does not fit this encoder (it "
                "was pretrained with another encoder size, catalogue or item features; use the "
                f"same env and encoder settings as the pretraining run): {err}"
            ) from None

    # -- the item table ------------------------------------------------------------------------
    def feature_matrix(self) -> Tensor | None:
        """The item features ``[N+1, F]`` this encoder was given (a buffer), or None."""
        return self.item_features

    def item_vectors(self) -> Tensor:
        """Every item's vector, ``[N+1, H]``: id embedding and/or projected features."""
        if self.item_embedding is None:
            return self.feature_projection(self.item_features)
        vectors = self.item_embedding.weight
        if self.feature_projection is not None:
            vectors = vectors + self.feature_projection(self.item_features)
        return vectors

    # -- history -> state ----------------------------------------------------------------------
    def embed_tokens(self, history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        """``[B, L]`` history, responses and watch times -> input tokens ``[B, L, H]``."""
        watch_time = watch_time.unsqueeze(-1).to(self.state_token.dtype)
        return (
            F.embedding(history, self.item_vectors())
            + self.response_embedding(response)
            + self.watch_time_projection(watch_time)
        )

    @property
    def state_position(self) -> int:
        """Which output of `contextualise` is the user's state: the state token's (0), or with
        a causal backbone the most recent position's (-1), the only one that reads everything."""
        return -1 if self.causal else 0

    def contextualise(self, tokens: Tensor, history: Tensor) -> Tensor:
        """Tokens ``[B, L, H]`` -> backbone outputs ``[B, L+1, H]``, the state token's first.

        Padding positions (``history == 0``) are not read. Split from `forward` so that
        pretraining can replace some tokens (masked items) before the backbone reads them, and
        read every position's output (the causal objective).
        """
        state_token = self.state_token.expand(tokens.shape[0], 1, -1)  # [B, 1, H]
        inputs = torch.cat([state_token, tokens], dim=1)  # [B, L+1, H]
        mask = torch.cat(
            [torch.ones_like(history[:, :1], dtype=torch.bool), history != PADDING_ITEM], dim=1
        )  # [B, L+1], the state token always read
        return self._backbone(inputs, mask)

    @abc.abstractmethod
    def _backbone(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """Inputs ``[B, L+1, H]`` (the state token first) and which of them are real, ``[B, L+1]``
        bool -> outputs ``[B, L+1, H]``. A padding input must not change any real position's
        output (whatever it holds); a causal backbone's output at a position reads only it and
        the positions before it."""

    def forward(self, history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        """``history``/``response`` ``[..., L]`` long, ``watch_time`` ``[..., L]`` float -> ``[..., H]``."""
        batch_shape = history.shape[:-1]
        length = history.shape[-1]
        history = history.reshape(-1, length)  # [B, L]
        tokens = self.embed_tokens(
            history, response.reshape(-1, length), watch_time.reshape(-1, length)
        )
        hidden = self.contextualise(tokens, history)
        return hidden[:, self.state_position].reshape(*batch_shape, self.hidden_size)


def _head_choice(init_scorer: str | bool | None) -> str | None:
    """``encoder.init_scorer`` as a key of `PRETRAINED_HEADS`, `AUTO_HEAD` or None; a ValueError
    for anything else. False (``encoder.init_scorer=false`` on the command line) means None, and
    True ``"next_item"`` (what it meant before the rating head existed)."""
    if init_scorer is False:
        return None
    if init_scorer is True:
        return "next_item"
    if init_scorer not in (*PRETRAINED_HEADS, AUTO_HEAD) and init_scorer is not None:
        raise ValueError(
            f"encoder.init_scorer={init_scorer!r}: choose {' | '.join(PRETRAINED_HEADS)} | "
            f"{AUTO_HEAD} or null (the encoder only)"
        )
    return init_scorer
