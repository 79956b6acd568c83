"""A BERT encoder of a user's interaction history.

The history is a sequence of (recommended item, user response) pairs. Each position is embedded as
``item embedding + response embedding + projected watch time``; a learned *state token* is put in
front (like BERT's ``[CLS]``) and its output is the user's state. The state token is always
attended to, so a user with an empty history (just reset) still gets a well-defined state instead
of an all-masked attention row.

With ``causal=True`` each position attends only to itself and the positions before it (SASRec's
attention, Kang & McAuley 2018), so every position's output can be trained to predict the item
after it. The state token then works as a start token every row can see, and the user's state is
the output at the most recent position, the only one that reads the whole window.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import BertConfig, BertModel

from recrl.encoders.pretrained import (  # noqa: F401 (bench/ imports pretraining_objective here)
    AUTO_HEAD,
    PRETRAINED_HEADS,
    load_pretrained,
    pretraining_objective,
)

log = logging.getLogger(__name__)

#: Response codes written by the environments (``history_response``).
NUM_RESPONSE_CODES = 3  # 0 = padding, 1 = shown and skipped, 2 = clicked


class HistoryEncoder(nn.Module):
    """Encodes ``[..., L]`` histories into ``[..., hidden_size]`` user states with a ``BertModel``.

    Args:
        num_items: catalogue size N; item ids are ``1..N`` and ``0`` is padding.
        history_length: L, the number of past recommendations the encoder sees.
        hidden_size, num_layers, num_heads, intermediate_size: the BERT shape (a randomly
            initialised BERT of that shape is built when ``pretrained_path`` is ``None``).
        dropout: BERT's hidden and attention dropout. 0 by default: dropout in a value network
            makes bootstrapped targets noisy and the collecting policy stochastic for no gain.
        pretrained_path: a local folder with Hugging Face BERT weights (``config.json`` +
            weights). Its transformer layers are loaded offline; the shape arguments are then
            taken from its config. Nothing is ever downloaded.
        item_features: public catalogue metadata ``[N+1, F]`` from the environment (e.g. topics),
            or None. An item's vector is then its id embedding plus a learnt projection of its
            features, so what is learnt about one item carries over to items like it.
        item_ids: learn an embedding per item id. False (only with ``item_features``) describes
            items by their features alone: far fewer parameters, but items that share features
            become indistinguishable (on the synthetic simulator DQN did worse this way).
        init_from: a checkpoint of ``algo=pretrain`` (BERT4Rec-style cloze pretraining,
            ``lightning_modules/pretrain.py``) to start from: every encoder weight is loaded, and
            the head named by ``init_scorer`` is kept in ``pretrained_scorer`` for the
            `ItemScorer` built on this encoder. The encoder's shape, catalogue and item features
            must match.
        init_scorer: with ``init_from``, which pretrained head the policy's item scorer starts
            from: ``"rating"`` (the predicted rating of each item: a myopic reward estimate),
            ``"next_item"`` (how likely each item comes next), ``"auto"`` (the rating head where
            the checkpoint has one, else the next-item head: logs without ratings train no
            rating head), or None (the encoder only; the scorer starts from scratch; False means
            the same, True ``"next_item"``). ``pretrained_scorer_head`` says which was loaded.
        causal: causal attention (module docstring): what ``algo=pretrain
            algo.objective=causal`` trains, and what an RL run started from such a checkpoint
            must use too (a mismatch with ``init_from`` is refused).
    """

    def __init__(
        self,
        num_items: int,
        history_length: int,
        hidden_size: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        intermediate_size: int = 256,
        dropout: float = 0.0,
        pretrained_path: str | None = None,
        item_features: Tensor | None = None,
        item_ids: bool = True,
        init_from: str | None = None,
        init_scorer: str | bool | None = "auto",
        causal: bool = False,
    ) -> None:
        super().__init__()
        if not item_ids and item_features is None:
            raise ValueError(
                "encoder.item_ids=false needs item features from the environment (e.g. "
                "env.observe_topics=true): items would have no representation at all"
            )
        if num_items < 1:
            raise ValueError(f"encoder: num_items must be >= 1, got {num_items}")
        if history_length < 1:
            raise ValueError(f"encoder: history_length must be >= 1, got {history_length}")
        if init_scorer is False:  # encoder.init_scorer=false on the command line: as null
            init_scorer = None
        if init_scorer is True:  # what true meant before the rating head existed
            init_scorer = "next_item"
        if init_scorer not in (*PRETRAINED_HEADS, AUTO_HEAD) and init_scorer is not None:
            raise ValueError(
                f"encoder.init_scorer={init_scorer!r}: choose {' | '.join(PRETRAINED_HEADS)} | "
                f"{AUTO_HEAD} or null (the encoder only)"
            )
        self.causal = causal
        self.bert = self._build_bert(
            history_length, hidden_size, num_layers, num_heads, intermediate_size, dropout,
            pretrained_path, causal,
        )
        hidden_size = self.bert.config.hidden_size
        self.hidden_size = hidden_size
        self.num_items = num_items
        self.history_length = history_length
        self.item_ids = item_ids
        self.item_embedding = (
            nn.Embedding(num_items + 1, hidden_size, padding_idx=0) if item_ids else None
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
                self.item_embedding.weight[0] = 0.0  # the padding id stays a zero vector
        nn.init.normal_(self.state_token, std=0.02)
        #: The pretrained head's weights, for `ItemScorer` (None without init_from), and which
        #: head of `PRETRAINED_HEADS` they are.
        self.pretrained_scorer: dict[str, Tensor] | None = None
        self.pretrained_scorer_head: str | None = None
        if init_from is not None:
            encoder_state, self.pretrained_scorer, self.pretrained_scorer_head = load_pretrained(
                init_from, init_scorer, causal)
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

    @staticmethod
    def _build_bert(
        history_length: int,
        hidden_size: int,
        num_layers: int,
        num_heads: int,
        intermediate_size: int,
        dropout: float,
        pretrained_path: str | None,
        causal: bool,
    ) -> BertModel:
        # is_decoder is BertModel's switch to causal self-attention (no cross-attention is
        # added without add_cross_attention); nothing is generated, so no key/value cache.
        if pretrained_path is not None:
            path = Path(pretrained_path).expanduser()
            if not (path / "config.json").is_file():
                raise ValueError(
                    f"encoder.pretrained_path={pretrained_path!r} is not a folder with Hugging Face "
                    "BERT weights (no config.json there); give a local path, nothing is downloaded"
                )
            bert = BertModel.from_pretrained(
                str(path), local_files_only=True, attn_implementation="sdpa",
                add_pooling_layer=False, is_decoder=causal, use_cache=False,
            )
            if bert.config.max_position_embeddings < history_length + 1:
                raise ValueError(
                    f"the pretrained BERT at {pretrained_path} has "
                    f"{bert.config.max_position_embeddings} positions, fewer than "
                    f"history_length + 1 = {history_length + 1}"
                )
            return bert
        if hidden_size % num_heads != 0:
            raise ValueError(
                f"encoder: hidden_size ({hidden_size}) must be a multiple of num_heads ({num_heads})"
            )
        config = BertConfig(
            vocab_size=1,  # items are fed as inputs_embeds; BERT's word table is unused
            hidden_size=hidden_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            intermediate_size=intermediate_size,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            max_position_embeddings=history_length + 1,  # + the state token
            attn_implementation="sdpa",
            is_decoder=causal,
            use_cache=False,
        )
        return BertModel(config, add_pooling_layer=False)

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
        causal attention the most recent position's (-1), the only one that reads everything."""
        return -1 if self.causal else 0

    def contextualise(self, tokens: Tensor, history: Tensor) -> Tensor:
        """Tokens ``[B, L, H]`` -> BERT outputs ``[B, L+1, H]``, the state token's first.

        Padding positions (``history == 0``) are not attended to. Split from `forward` so that
        pretraining can replace some tokens (masked items) before the transformer reads them,
        and read every position's output (the causal objective).
        """
        state_token = self.state_token.expand(tokens.shape[0], 1, -1)  # [B, 1, H]
        inputs = torch.cat([state_token, tokens], dim=1)  # [B, L+1, H]
        attention_mask = torch.cat(
            [torch.ones_like(history[:, :1]), (history != 0).long()], dim=1
        )  # [B, L+1]
        return self.bert(inputs_embeds=inputs, attention_mask=attention_mask).last_hidden_state

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
