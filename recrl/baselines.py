"""Baseline recommenders, run through exactly the same evaluation code as the learnt policies.

Each is a ``TensorDictModuleBase`` that reads the environment's observation and writes
``"action"``, so evaluation cannot tell a baseline from an agent.
"""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor

from recrl.observation import uniform_valid_action


class RandomRecommender(TensorDictModuleBase):
    """Uniformly random over the items the environment allows (``action_mask``)."""

    in_keys = ["action_mask"]
    out_keys = ["action"]

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        # One seeded generator per device it meets: draws happen where the env's mask is.
        self.generators: dict[torch.device, torch.Generator] = {}

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mask = tensordict["action_mask"]  # [B, N+1]
        if mask.device not in self.generators:
            self.generators[mask.device] = torch.Generator(mask.device).manual_seed(self.seed)
        action = uniform_valid_action(mask, self.generators[mask.device])  # [B]
        return tensordict.set("action", action)


class MostPopularRecommender(TensorDictModuleBase):
    """The most-clicked allowed item, by click counts gathered during training.

    Ties go to the lowest item id, so the baseline is deterministic.
    """

    in_keys = ["action_mask"]
    out_keys = ["action"]

    def __init__(self, item_clicks: Tensor) -> None:
        super().__init__()
        self.register_buffer("item_clicks", item_clicks.detach().float().clone())  # [N+1]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        mask = tensordict["action_mask"]  # [B, N+1]
        scores = torch.where(mask, self.item_clicks.to(mask.device), float("-inf"))
        return tensordict.set("action", scores.argmax(-1))


class MyopicOracle(TensorDictModuleBase):
    """Knows the hidden user state and maximises the *immediate* expected reward.

    It is the strongest policy that ignores the future: beating it means a policy has learnt
    the long-term effect of a recommendation (in the interest-evolution model, item quality
    keeps the user longer), which is what RL is for.
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

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        expected = self.env.expected_immediate_reward()  # [B, N+1], -inf where masked
        return tensordict.set("action", expected.argmax(-1))
