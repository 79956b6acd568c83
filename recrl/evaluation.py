"""Online evaluation: every held-out user plays exactly one episode under a fixed policy.

The same function evaluates agents and baselines, so their numbers are directly comparable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from tensordict import TensorDictBase
from torch import Tensor
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


class Episodes(NamedTuple):
    """What one episode per user leaves behind: per-user totals and the items recommended."""

    returns: Tensor  # [U] float64, the episode's total reward
    clicks: Tensor  # [U] float64
    lengths: Tensor  # [U] float64, recommendations before the user left
    recommended: Tensor  # [N + 1] bool, items recommended to anybody


#: Steps between two checks whether every evaluation episode has ended. Each check reads a
#: flag back from the device (a host synchronisation); users who have left are not counted
#: between checks, so the numbers do not depend on it.
DONE_CHECK_EVERY = 16


@torch.no_grad()
def play_episodes(env: EnvBase, policy: Policy, max_steps: int = 10_000) -> Episodes:
    """Runs one episode per user in ``env`` (all users batched).

    Users whose episode has ended keep being stepped with the rest of the batch (the batch is
    stepped as one tensor), but nothing they do afterwards is counted. The totals stay on the
    environment's device until the end: a GPU evaluation synchronises with the host once every
    `DONE_CHECK_EVERY` steps, not at every step.
    """
    num_users, device = env.batch_size[0], env.device
    returns = torch.zeros(num_users, dtype=torch.float64, device=device)
    clicks = torch.zeros(num_users, dtype=torch.float64, device=device)
    lengths = torch.zeros(num_users, dtype=torch.float64, device=device)
    times_recommended = torch.zeros(env.num_items + 1, dtype=torch.float64, device=device)
    alive = torch.ones(num_users, dtype=torch.bool, device=device)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for step in range(max_steps):
            td = env.step(policy(td))
            counted = alive.double()
            times_recommended.index_add_(0, td["action"], counted)
            nxt = td["next"]
            returns += nxt["reward"].squeeze(-1).double() * counted
            clicks += nxt["click"].double() * counted
            lengths += counted
            alive &= ~nxt["done"].squeeze(-1)
            if (step + 1) % DONE_CHECK_EVERY == 0 and not alive.any():
                break
            td = step_mdp(td)
    if alive.any():
        raise RuntimeError(
            f"{int(alive.sum())} evaluation episodes did not end within {max_steps} steps; "
            "raise evaluation.max_steps or give the environment a max_episode_steps"
        )
    return Episodes(returns.cpu(), clicks.cpu(), lengths.cpu(), (times_recommended > 0).cpu())


def summarise(episodes: Episodes) -> dict[str, float]:
    """Mean return, clicks per episode and episode length with 95% CIs over users, the
    click-through rate (clicks / recommendations), and catalogue coverage (share of items
    recommended at least once to anybody)."""
    return_mean, return_ci95 = mean_ci95(episodes.returns)
    clicks_mean, clicks_ci95 = mean_ci95(episodes.clicks)
    length_mean, length_ci95 = mean_ci95(episodes.lengths)
    return {
        "return_mean": return_mean,
        "return_ci95": return_ci95,
        "clicks_mean": clicks_mean,
        "clicks_ci95": clicks_ci95,
        "ctr": (episodes.clicks.sum() / episodes.lengths.sum()).item(),
        "episode_length": length_mean,
        "episode_length_ci95": length_ci95,
        "coverage": episodes.recommended[1:].double().mean().item(),
        "num_users": episodes.returns.numel(),
    }


def evaluate_policy(env: EnvBase, policy: Policy, max_steps: int = 10_000) -> dict[str, float]:
    """One episode per user in ``env`` under ``policy``, summarised (`summarise`)."""
    return summarise(play_episodes(env, policy, max_steps))


# -- evaluation under DDP --------------------------------------------------------------------------
def _distributed_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


_BROADCAST_GROUP: Any = None


def _broadcast_group() -> Any:
    """A gloo group over all processes: evaluation results are small CPU tensors, whatever
    backend (NCCL on GPUs) training uses. Created once, by every process together."""
    global _BROADCAST_GROUP
    if _BROADCAST_GROUP is None:
        _BROADCAST_GROUP = dist.new_group(backend="gloo")
    return _BROADCAST_GROUP


def play_users(
    make_env: Callable[[int, int], EnvBase],
    policy_for_env: Callable[[EnvBase], Policy],
    num_users: int,
    seed: int,
    max_steps: int,
) -> Episodes:
    """One episode for each of the ``num_users`` users of ``make_env(num_users, seed)``.

    Two policies played with the same arguments meet the same users in the same order (what
    `paired_gap` relies on). Under DDP, process 0 plays them all and sends the episodes to the
    others: every process returns the same episodes, and they are the users, and the numbers, a
    one-process run with the same weights gets, whatever the number of processes (the others
    wait; one batched episode per user is a small part of a training run). Call it on every
    process.
    """
    rank, world_size = _distributed_world()
    episodes = None
    if rank == 0:
        env = make_env(num_users, seed)
        episodes = play_episodes(env, policy_for_env(env), max_steps)
    if world_size > 1:
        box = [None if episodes is None else tuple(t.cpu() for t in episodes)]
        dist.broadcast_object_list(box, src=0, group=_broadcast_group())
        episodes = Episodes(*box[0])
    return episodes


def paired_gap(returns: Tensor, other: Tensor) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``returns - other``, user by user.

    For two policies played on the same users (`play_users` with the same seed): users differ
    far more from each other than the policies do, and the per-user difference cancels that
    spread, so this interval is much tighter than the two separate return intervals. A gap
    whose interval excludes 0 is a difference the users did not cause.
    """
    if returns.shape != other.shape:
        raise ValueError(f"paired returns need the same users: shapes {tuple(returns.shape)} and "
                         f"{tuple(other.shape)}")
    return mean_ci95(returns - other)
