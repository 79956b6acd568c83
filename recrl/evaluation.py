"""Online evaluation: every held-out user plays exactly one episode under a fixed policy.

The same function evaluates agents and baselines, so their numbers are directly comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tensordict import TensorDictBase
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type, step_mdp

Policy = Callable[[TensorDictBase], TensorDictBase]

#: z-value of a two-sided 95% normal interval. Evaluations use hundreds of users, where the
#: t-distribution's correction is below 1%.
Z_95 = 1.959964


def mean_ci95(values: torch.Tensor) -> tuple[float, float]:
    """Mean and half-width of its 95% confidence interval (normal approximation)."""
    values = values.double()
    n = values.numel()
    half_width = Z_95 * values.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return values.mean().item(), half_width


@torch.no_grad()
def evaluate_policy(env: EnvBase, policy: Policy, max_steps: int = 10_000) -> dict[str, float]:
    """Runs one episode per user in ``env`` (all users batched) and summarises it.

    Users whose episode has ended keep being stepped with the rest of the batch (the batch is
    stepped as one tensor), but nothing they do afterwards is counted.

    Returns mean return, clicks per episode and episode length with 95% CIs over users, the
    click-through rate (clicks / recommendations), and catalogue coverage (share of items
    recommended at least once to anybody).
    """
    num_users = env.batch_size[0]
    returns = torch.zeros(num_users, dtype=torch.float64)
    clicks = torch.zeros(num_users, dtype=torch.float64)
    lengths = torch.zeros(num_users, dtype=torch.float64)
    recommended = torch.zeros(env.num_items + 1, dtype=torch.bool)
    alive = torch.ones(num_users, dtype=torch.bool)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for _ in range(max_steps):
            td = env.step(policy(td))
            recommended[td["action"][alive]] = True
            nxt = td["next"]
            returns += nxt["reward"].squeeze(-1).double() * alive
            clicks += (nxt["click"] & alive).double()
            lengths += alive.double()
            alive &= ~nxt["done"].squeeze(-1)
            if not alive.any():
                break
            td = step_mdp(td)
    if alive.any():
        raise RuntimeError(
            f"{int(alive.sum())} evaluation episodes did not end within {max_steps} steps; "
            "raise evaluation.max_steps or give the environment a max_episode_steps"
        )
    return_mean, return_ci95 = mean_ci95(returns)
    clicks_mean, clicks_ci95 = mean_ci95(clicks)
    length_mean, length_ci95 = mean_ci95(lengths)
    return {
        "return_mean": return_mean,
        "return_ci95": return_ci95,
        "clicks_mean": clicks_mean,
        "clicks_ci95": clicks_ci95,
        "ctr": (clicks.sum() / lengths.sum()).item(),
        "episode_length": length_mean,
        "episode_length_ci95": length_ci95,
        "coverage": recommended[1:].double().mean().item(),
        "num_users": num_users,
    }
