"""A GRU backbone over the history (GRU4Rec, Hidasi et al. 2016): ``encoder=gru``.

The GRU reads the state token (a learnt start token) and then the real items, oldest first; the
user's state is its output after the most recent item. A recurrent network reads only the past,
so the encoder is causal: ``algo=pretrain algo.objective=causal`` trains it as it trains
SASRec. Cheaper than attention per position, and with no maximum history length of its own.
"""

from __future__ import annotations

from torch import Tensor, nn

from recrl.encoders.base import HistoryEncoderBase


class GRUEncoder(HistoryEncoderBase):
    """A `HistoryEncoderBase` whose backbone is a ``torch.nn.GRU`` (``self.gru``).

    Args:
        num_items, history_length, hidden_size, item_features, item_ids, init_from, init_scorer:
            as `HistoryEncoderBase` (``hidden_size`` is also the GRU's width: no projection).
        num_layers: stacked GRU layers.
        dropout: dropout between stacked layers (none with one layer). 0 for RL, as BERT's.
    """

    input_norm: nn.LayerNorm
    gru: nn.GRU

    def __init__(
        self,
        num_items: int,
        history_length: int,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
        item_features: Tensor | None = None,
        item_ids: bool = True,
        init_from: str | None = None,
        init_scorer: str | bool | None = "auto",
    ) -> None:
        # The token sum mixes unit-scale response embeddings with an unbounded watch-time
        # projection; normalised, as BERT normalises its input embeddings, the gates do not
        # start saturated.
        input_norm = nn.LayerNorm(hidden_size)
        gru = nn.GRU(hidden_size, hidden_size, num_layers, batch_first=True, dropout=dropout)
        super().__init__(
            num_items, history_length, hidden_size, backbone={"input_norm": input_norm, "gru": gru},
            causal=True, item_features=item_features, item_ids=item_ids, init_from=init_from,
            init_scorer=init_scorer,
        )

    def _backbone(self, inputs: Tensor, mask: Tensor) -> Tensor:
        """The GRU steps over the real inputs only: each row's real positions are moved to the
        front in order (a stable sort of the mask), and every position's output is the GRU's
        output after the latest real input up to it, so padding (anywhere) changes nothing and
        an empty history's state is the state token's output."""
        order = (~mask).int().argsort(dim=1, stable=True)  # [B, L+1], real positions first
        real_first = inputs.gather(1, order[..., None].expand_as(inputs))  # [B, L+1, H]
        outputs, _ = self.gru(self.input_norm(real_first))  # [B, L+1, H]; padding at the end
        latest = mask.long().cumsum(dim=1) - 1  # [B, L+1], >= 0: the state token is real
        return outputs.gather(1, latest[..., None].expand_as(outputs))  # [B, L+1, H]
