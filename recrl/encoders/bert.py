"""A BERT backbone over the history (`HistoryEncoder`): the default encoder.

Every position attends to every real position and to the state token (like BERT's ``[CLS]``),
whose output is the user's state. The state token is always attended to, so a user with an empty
history (just reset) still gets a well-defined state instead of an all-masked attention row.
Tokens, the item table and the state token are the base class's (`recrl.encoders.base`).

With ``causal=True`` each position attends only to itself and the positions before it (SASRec's
attention, Kang & McAuley 2018), so every position's output can be trained to predict the item
after it. The state token then works as a start token every row can see, and the user's state is
the output at the most recent position, the only one that reads the whole window.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor
from transformers import BertConfig, BertModel

from recrl.encoders.base import HistoryEncoderBase


class HistoryEncoder(HistoryEncoderBase):
    """A `HistoryEncoderBase` whose backbone is a ``BertModel`` (``self.bert``; sdpa attention).

    Args:
        num_items, history_length, item_features, item_ids, init_from, init_scorer: as
            `HistoryEncoderBase`.
        hidden_size, num_layers, num_heads, intermediate_size: the BERT shape (a randomly
            initialised BERT of that shape is built when ``pretrained_path`` is ``None``).
        dropout: BERT's hidden and attention dropout. 0 by default: dropout in a value network
            makes bootstrapped targets noisy and the collecting policy stochastic for no gain.
        pretrained_path: a local folder with Hugging Face BERT weights (``config.json`` +
            weights). Its transformer layers are loaded offline; the shape arguments are then
            taken from its config. Nothing is ever downloaded.
        causal: causal attention (module docstring): what ``algo=pretrain
            algo.objective=causal`` trains, and what an RL run started from such a checkpoint
            must use too (a mismatch with ``init_from`` is refused).
    """

    bert: BertModel

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
        # The shared checks first: a BERT-base is not built for arguments that fail them.
        self.check_arguments(num_items, history_length, item_features, item_ids, init_scorer)
        bert = self._build_bert(
            history_length, hidden_size, num_layers, num_heads, intermediate_size, dropout,
            pretrained_path, causal,
        )
        super().__init__(
            num_items, history_length, bert.config.hidden_size, backbone={"bert": bert},
            causal=causal, item_features=item_features, item_ids=item_ids, init_from=init_from,
            init_scorer=init_scorer,
        )

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

    def _backbone(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """BERT over ``[B, L+1, H]`` inputs; padding (``mask`` False) is not attended to."""
        return self.bert(inputs_embeds=inputs, attention_mask=mask.long()).last_hidden_state
