"""Reading an ``algo=pretrain`` checkpoint: the encoder weights and a head to start a policy from.

Any encoder (`recrl.encoders.base.HistoryEncoderBase`) starts from such a checkpoint with
``encoder.init_from``; this module only reads and checks the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: The heads of an ``algo=pretrain`` checkpoint a policy's scorer can start from, by the name
#: ``encoder.init_scorer`` gives them, and their key prefix in the checkpoint.
PRETRAINED_HEADS = {"rating": "rating_head.", "next_item": "next_item_head."}
#: ``encoder.init_scorer=auto``: the first head of `PRETRAINED_HEADS` the checkpoint holds.
AUTO_HEAD = "auto"


def pretraining_objective(checkpoint: dict[str, Any]) -> str:
    """The ``algo.objective`` of a loaded ``algo=pretrain`` checkpoint: it decides the encoder's
    attention (``causal``). Checkpoints written before the choice existed were all cloze."""
    return checkpoint.get("hyper_parameters", {}).get("objective", "cloze")


def load_pretrained(path: str, head: str | None = None, causal: bool = False
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor] | None, str | None]:
    """The encoder weights of an ``algo=pretrain`` checkpoint, its ``head`` (a key of
    `PRETRAINED_HEADS`; ``"auto"``: the first of them the checkpoint holds; None: no head), and
    that head's name.

    Accepts Lightning checkpoints (``checkpoints/last.ckpt``; read with ``weights_only=True``, so
    loading a checkpoint cannot run code) and plain state dicts. A Lightning checkpoint records
    its pretraining objective, and an encoder whose attention (``causal``) does not fit it is
    refused: the weights would load, and silently read the history the other way.
    """
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(
            f"encoder.init_from={path!r}: no such file; give the checkpoint of a pretraining run "
            "(outputs/<date>/<time>/checkpoints/last.ckpt of python -m recrl.run algo=pretrain)"
        )
    state = torch.load(file, map_location="cpu", weights_only=True)
    objective = pretraining_objective(state)
    pretrained_causal = objective == "causal"
    if "state_dict" in state and pretrained_causal != causal:
        raise ValueError(
            f"encoder.init_from={path!r} was pretrained with algo.objective={objective}, whose "
            f"encoder attention is {'causal' if pretrained_causal else 'bidirectional'}; set "
            f"encoder.causal={str(pretrained_causal).lower()} to read histories as it learnt to"
        )
    state = state.get("state_dict", state)
    encoder = {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    if not encoder:
        raise ValueError(
            f"encoder.init_from={path!r} holds no encoder weights (no 'encoder.*' keys); is it "
            "the checkpoint of an algo=pretrain run?"
        )
    if head is None:
        return encoder, None, None
    heads = {name: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
             for name, prefix in PRETRAINED_HEADS.items()}
    if head == AUTO_HEAD:  # a log without ratings trains no rating head
        head = next((name for name, weights in heads.items() if weights), None)
        if head is None:
            raise ValueError(
                f"encoder.init_from={path!r} has none of the heads "
                f"{' | '.join(PRETRAINED_HEADS)}; set encoder.init_scorer=null to load its "
                "encoder only"
            )
    if not heads[head]:
        raise ValueError(
            f"encoder.init_from={path!r} has no {head} head (a rating head is trained only on "
            "logs with ratings and algo.rating_weight > 0); set encoder.init_scorer to "
            f"{' | '.join(h for h in (*PRETRAINED_HEADS, AUTO_HEAD) if h != head)} or null"
        )
    return encoder, heads[head], head
