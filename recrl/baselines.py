"""Baseline recommenders, run through exactly the same evaluation code as the learnt policies.

Each is a ``TensorDictModuleBase`` that reads the environment's observation and writes
``"action"``, so evaluation cannot tell a baseline from an agent. With ``slate_size = k > 1``
each recommends a slate: its ``k`` best-scored allowed items, best first (`top_slate`).
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from recrl.observation import uniform_valid_action, uniform_valid_slate


def top_slate(scores: Tensor, slate_size: int) -> Tensor:
    """The best-scored item per row of ``scores`` ([B, N+1], -inf where not allowed): [B] for a
    slate of one (ties to the lowest id), else the ``slate_size`` best, best first, [B, k]."""
    if slate_size == 1:
        return scores.argmax(-1)
    return scores.topk(slate_size, dim=-1).indices


class RandomRecommender(TensorDictModuleBase):
    """Uniformly random over the items the environment allows (``action_mask``); for slates,
    uniformly random over the ordered lists of ``slate_size`` distinct allowed items."""

    in_keys = ["action_mask"]
    out_keys = ["action"]

    def __init__(self, seed: int = 0, slate_size: int = 1) -> None:
        super().__init__()
        self.seed = seed
        self.slate_size = slate_size
        # One seeded generator per device it meets: draws happen where the env's mask is.
        self.generators: dict[torch.device, torch.Generator] = {}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mask = tensordict["action_mask"]  # [B, N+1]
        if mask.device not in self.generators:
            self.generators[mask.device] = torch.Generator(mask.device).manual_seed(self.seed)
        generator = self.generators[mask.device]
        if self.slate_size == 1:
            return tensordict.set("action", uniform_valid_action(mask, generator))  # [B]
        return tensordict.set("action", uniform_valid_slate(mask, self.slate_size, generator))


class MostPopularRecommender(TensorDictModuleBase):
    """The most-clicked allowed item (or the top-k of them), by click counts gathered during
    training or in a log.

    Ties go to the lowest item id for a single item, so the baseline is deterministic.
    """

    in_keys = ["action_mask"]
    out_keys = ["action"]

    def __init__(self, item_clicks: Tensor, slate_size: int = 1) -> None:
        super().__init__()
        self.slate_size = slate_size
        self.register_buffer("item_clicks", item_clicks.detach().float().clone())  # [N+1]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mask = tensordict["action_mask"]  # [B, N+1]
        scores = torch.where(mask, self.item_clicks.to(mask.device), float("-inf"))
        return tensordict.set("action", top_slate(scores, self.slate_size))


class MyopicOracle(TensorDictModuleBase):
    """Knows the hidden user state and maximises the *immediate* expected reward.

    It is the strongest policy that ignores the future: beating it means a policy has learnt
    the long-term effect of a recommendation (in the interest-evolution model, item quality
    keeps the user longer), which is what RL is for. For slates it shows the ``k`` items of
    highest expected immediate reward: under RecSim's proportional choice model, where every
    item of a slate yields the same watch time when chosen, that is the slate of highest
    expected immediate reward (the chance of a click, ``sum w / (sum w + w_0)``, grows with every
    weight).
    """

    in_keys = ["action_mask"]
    out_keys = ["action"]

    def __init__(self, env) -> None:  # an env with ``expected_immediate_reward()``
        super().__init__()
        if not getattr(env, "has_expected_reward", False):
            raise TypeError(
                f"{type(env).__name__} exposes no hidden user state, so it has no myopic oracle"
            )
        self.env = env
        self.slate_size = getattr(env, "slate_size", 1)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        expected = self.env.expected_immediate_reward()  # [B, N+1], -inf where masked
        return tensordict.set("action", top_slate(expected, self.slate_size))
