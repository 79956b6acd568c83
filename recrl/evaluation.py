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


@torch.no_grad()
def play_episodes(env: EnvBase, policy: Policy, max_steps: int = 10_000) -> Episodes:
    """Runs one episode per user in ``env`` (all users batched).

    Users whose episode has ended keep being stepped with the rest of the batch (the batch is
    stepped as one tensor), but nothing they do afterwards is counted.
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
            recommended[td["action"].cpu()[alive]] = True  # alive lives on the CPU
            nxt = td["next"]
            returns += nxt["reward"].squeeze(-1).double().cpu() * alive
            clicks += (nxt["click"].cpu() & alive).double()
            lengths += alive.double()
            alive &= ~nxt["done"].squeeze(-1).cpu()
            if not alive.any():
                break
            td = step_mdp(td)
    if alive.any():
        raise RuntimeError(
            f"{int(alive.sum())} evaluation episodes did not end within {max_steps} steps; "
            "raise evaluation.max_steps or give the environment a max_episode_steps"
        )
    return Episodes(returns, clicks, lengths, recommended)


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


# -- evaluation split over DDP processes ---------------------------------------------------------
def users_of_rank(num_users: int, rank: int, world_size: int) -> int:
    """Rank ``rank``'s share of ``num_users`` users: as equal as possible, lower ranks first."""
    return num_users // world_size + int(rank < num_users % world_size)


def _distributed_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def process_rank() -> int:
    """This process's rank in the initialised process group (0 without one): evaluation
    policies with their own randomness seed themselves with ``seed + process_rank()``."""
    return _distributed_world()[0]


_GATHER_GROUP: Any = None


def _gather_group() -> Any:
    """A gloo group over all processes: evaluation statistics are small CPU tensors, whatever
    backend (NCCL on GPUs) training uses. Created once, by every process together."""
    global _GATHER_GROUP
    if _GATHER_GROUP is None:
        _GATHER_GROUP = dist.new_group(backend="gloo")
    return _GATHER_GROUP


def gather_episodes(episodes: Episodes) -> tuple[Episodes, list[int]]:
    """Every process's episodes, concatenated in rank order (identical on every process), and
    the number of users each process played."""
    rank, world_size = _distributed_world()
    if world_size == 1:
        return episodes, [episodes.returns.numel()]
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, tuple(t.cpu() for t in episodes), group=_gather_group())
    merged = Episodes(
        *(torch.cat([part[i] for part in parts]) for i in range(3)),
        torch.stack([part[3] for part in parts if part[0].numel()]).any(dim=0),
    )
    return merged, [part[0].numel() for part in parts]


def play_split(
    make_env: Callable[[int, int], EnvBase],
    policy_for_env: Callable[[EnvBase], Policy],
    num_users: int,
    seed: int,
    max_steps: int,
) -> tuple[Episodes, list[int]]:
    """``num_users`` users' episodes, split over the DDP processes and gathered.

    Process r plays ``users_of_rank(num_users, r, world_size)`` users of ``make_env(n, seed + r)``
    and the episodes are gathered in rank order, so every process returns the same episodes, and
    two policies played with the same arguments meet the same users in the same order (what
    `paired_gap` relies on). Also returns how many users each process played. Call it on every
    process.
    """
    rank, world_size = _distributed_world()
    share = users_of_rank(num_users, rank, world_size)
    if share > 0:
        env = make_env(share, seed + rank)
        episodes = play_episodes(env, policy_for_env(env), max_steps)
    else:
        empty = torch.zeros(0, dtype=torch.float64)
        episodes = Episodes(empty, empty, empty, torch.zeros(0, dtype=torch.bool))
    return gather_episodes(episodes)


def summarise_split(episodes: Episodes, users_per_process: list[int]) -> dict[str, Any]:
    """`summarise`, plus how the users were split when more than one process played them."""
    summary: dict[str, Any] = summarise(episodes)
    if len(users_per_process) > 1:
        summary["users_per_process"] = users_per_process
    return summary


def evaluate_split(
    make_env: Callable[[int, int], EnvBase],
    policy_for_env: Callable[[EnvBase], Policy],
    num_users: int,
    seed: int,
    max_steps: int,
) -> dict[str, Any]:
    """``num_users`` users split over the DDP processes (`play_split`), summarised over all.

    With one process this is exactly ``evaluate_policy(make_env(num_users, seed), ...)``; with
    several the users are other draws of the same population (each process has its own seed),
    so runs on 1 and on N devices are compared statistically, on as many users. Call it on every
    process.
    """
    return summarise_split(*play_split(make_env, policy_for_env, num_users, seed, max_steps))


def paired_gap(returns: Tensor, other: Tensor) -> tuple[float, float]:
    """Mean and 95% CI half-width of ``returns - other``, user by user.

    For two policies played on the same users (`play_split` with the same seed): users differ
    far more from each other than the policies do, and the per-user difference cancels that
    spread, so this interval is much tighter than the two separate return intervals. A gap
    whose interval excludes 0 is a difference the users did not cause.
    """
    if returns.shape != other.shape:
        raise ValueError(f"paired returns need the same users: shapes {tuple(returns.shape)} and "
                         f"{tuple(other.shape)}")
    return mean_ci95(returns - other)
