"""What a recommendation observation is: the contract between the simulators and their readers.

The simulators (`recrl.envs`) write observations; the encoders, the algorithms, the baselines,
offline ranking (`recrl.ranking`) and pretraining on logs read or imitate them. The codes and
keys both sides must agree on live here, in a module that imports no simulator, so evaluation
code can read an observation without importing (and depending on) the code that simulates one.

An observation of ``B`` users over ``N`` items (ids ``1..N``) with a window of ``L``:

- ``history`` ``[B, L]`` int64: the recommended item ids, most recent last, left-padded with
  `PADDING_ITEM`;
- ``history_response`` ``[B, L]`` int64: a response code (`PADDING`, `SHOWN`, `CLICKED`) each;
- ``history_watch_time`` ``[B, L]`` float32: the watch time (the reward) of each item, 0 without
  a click; on logged data, the logged rating (`MAX_RATING` for logs without ratings);
- ``action_mask`` ``[B, N+1]`` bool: the items that may be recommended now (never the padding
  id); `uniform_valid_action` draws from it.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "CLICKED",
    "HISTORY_KEYS",
    "MAX_RATING",
    "NUM_RESPONSE_CODES",
    "PADDING",
    "PADDING_ITEM",
    "SHOWN",
    "uniform_valid_action",
    "uniform_valid_slate",
    "chosen_position",
]

#: The observation keys an encoder reads, in the order of its arguments
#: ``(history, response, watch_time)``. A list, not a tuple: TensorDict reads a tuple of strings
#: as one nested key.
HISTORY_KEYS = ["history", "history_response", "history_watch_time"]

#: The item id of an empty history slot (real items are ``1..N``). Row 0 of every item table is
#: padding, and no policy may recommend it.
PADDING_ITEM = 0

# Codes of ``history_response``: what the user did with each item of the window.
#: An empty slot of the window (its item is `PADDING_ITEM`).
PADDING = 0
#: Shown and not clicked.
SHOWN = 1
#: Clicked. Logged histories (start histories, pretraining windows, ranking inputs) mark every
#: logged item so: the user chose it.
CLICKED = 2
#: How many response codes there are: the size of an encoder's response embedding table.
NUM_RESPONSE_CODES = CLICKED + 1

#: The top of the rating scale. Simulated ratings on logged data lie in ``[0, MAX_RATING]``, and
#: a logged item of a log without ratings gets it as its watch time (the user chose it).
MAX_RATING = 5.0


def uniform_valid_action(
    action_mask: Tensor, generator: torch.Generator | None = None, max_rounds: int = 8
) -> Tensor:
    """Sample one valid item per row of ``action_mask`` ([B, N+1] bool) uniformly, [B] int64.

    The neutral policy, used by the random baseline and to drive simulators in tests and
    benchmarks; it reads only the observation, so it lives here and not with the simulators.

    Rejection sampling needs O(B) memory per round (a multinomial over the mask would
    materialise a [B, N+1] float tensor: 6.4 GB for 16k users x 100k items). Rows still
    invalid after ``max_rounds`` (masks with few valid items) fall back to a multinomial over
    those rows only.
    """
    B, n = action_mask.shape
    rows = torch.arange(B, device=action_mask.device)
    action = torch.randint(1, n, (B,), generator=generator, device=action_mask.device)
    for _ in range(max_rounds):
        bad = ~action_mask[rows, action]  # [B]
        if not bad.any():
            return action
        redraw = torch.randint(1, n, (B,), generator=generator, device=action_mask.device)
        action = torch.where(bad, redraw, action)
    bad = ~action_mask[rows, action]
    if bad.any():
        picked = torch.multinomial(action_mask[bad].float(), 1, generator=generator)
        action[bad] = picked.squeeze(1)
    return action


def uniform_valid_slate(action_mask: Tensor, slate_size: int,
                        generator: torch.Generator | None = None) -> Tensor:
    """``slate_size`` distinct valid items per row of ``action_mask`` ([B, N+1] bool), uniformly
    among the ordered lists of that many valid items, [B, k] int64.

    Independent uniform keys, valid items first, the top k: a uniformly random subset in a
    uniformly random order. Rows with fewer than k valid items are the caller's error (the
    envs refuse such settings when they are built).
    """
    keys = torch.rand(action_mask.shape, generator=generator, device=action_mask.device)
    keys = keys.masked_fill(~action_mask, -1.0)
    return keys.topk(slate_size, dim=1).indices


def chosen_position(next_response: Tensor, slate_size: int) -> Tensor:
    """The slate position of the item each user chose, read from the response codes of the
    window after the step (``[..., L]``, the slate its last ``slate_size`` entries), ``[...]``
    int64; -1 where the user chose nothing."""
    clicked = next_response[..., -slate_size:] == CLICKED  # [..., k]
    return torch.where(clicked.any(-1), clicked.long().argmax(-1), -1)
