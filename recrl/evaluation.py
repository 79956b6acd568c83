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

from recrl.observation import chosen_position
from recrl.diversity import (
    dissimilarity, episode_diversity, gini, majority_categories, self_information,
)

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
    """What one episode per user leaves behind: per-user totals and how items were exposed.

    The item-level fields are None where the env (or the run) cannot provide their input:
    `summarise` then leaves their metrics out rather than reporting a number that means nothing.
    """

    returns: Tensor  # [U] float64, the episode's total reward
    clicks: Tensor  # [U] float64
    lengths: Tensor  # [U] float64, recommendations before the user left
    exposure: Tensor  # [N + 1] float64, times each item was recommended (0: padding, never)
    # [U] float64 intra-list diversity (NaN below 2 recommendations); None: no item vectors.
    diversity: Tensor | None
    novelty: Tensor | None  # [U] float64 summed self-information (bits); None: no popularity
    # [U] float64 recommendations in a majority category; None: the items have no categories.
    dominated: Tensor | None
    # Slates only (None for one item per step), see `SlateStats`.
    slates: SlateStats | None = None

    @property
    def recommended(self) -> Tensor:
        """[N + 1] bool, items recommended to anybody."""
        return self.exposure > 0


class SlateStats(NamedTuple):
    """What list metrics need, summed over every counted slate of every user."""

    slate_size: int
    click_positions: Tensor  # [k] float64, clicks at each slate position
    ndcg: Tensor | None  # [U] float64 summed slate NDCG; None: the env hides true preferences
    diversity: Tensor | None  # [U] float64 summed intra-slate diversity; None: no item vectors


def slate_ndcg(slate: Tensor, relevance: Tensor) -> Tensor:
    """NDCG of each ordered slate ([B, k] item ids) against true relevances ([B, N+1], -inf at
    the items that could not be shown), [B] float64: linear gains, ``1 / log2(position + 2)``
    discounts, the ideal being the k most relevant items that could be shown (1 where even those
    have no gain). The synthetic users' relevance is their expected immediate reward."""
    k = slate.shape[1]
    discount = 1.0 / torch.log2(torch.arange(k, device=slate.device, dtype=torch.float64) + 2)
    gains = relevance.gather(1, slate).double().clamp(min=0)  # [B, k]
    ideal = relevance.topk(k, dim=1).values.double().clamp(min=0)  # [B, k]
    dcg, idcg = gains @ discount, ideal @ discount
    return torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12), 1.0)


def slate_diversity(slate: Tensor, vectors: Tensor) -> Tensor:
    """Mean dissimilarity (`recrl.diversity.dissimilarity`) over the pairs of items of each slate
    ([B, k], k >= 2), [B] float64."""
    points = vectors[slate].double()  # [B, k, D]
    dissimilar = dissimilarity(torch.cdist(points, points,
                                           compute_mode="donot_use_mm_for_euclid_dist"))
    k = slate.shape[1]
    return dissimilar.sum(dim=(1, 2)) / (k * (k - 1))


class ItemReference(NamedTuple):
    """What the item-level metrics measure recommendations against, on the env's device (each
    None where the env or the run has no such thing; see `item_reference`)."""

    vectors: Tensor | None  # [N+1, D] item vectors (intra-list diversity)
    information: Tensor | None  # [N+1] self-information -log2 p(i) in bits (novelty)
    in_majority: Tensor | None  # [N+1] float64, 1 for items of a majority category, NaN: none


def popularity_reference(env: EnvBase, training_popularity: Tensor | None
                         ) -> tuple[Tensor | None, str]:
    """Interaction counts per item ``[N+1]`` that novelty and the majority categories are
    measured against, and where they come from, in words (``results.json``).

    A simulator fitted on a log says how popular each item was in it (``env.logged_popularity``:
    the training users' interactions on logged data, the logged ratings on Coat): that comes
    first, as EasyRL4Rec measures against its training data, and it is the same for every
    policy and every run. Synthetic users have no log: then the clicks the agent got while
    training (``training_popularity``, the ``popular`` baseline's counts), else nothing.
    """
    logged = getattr(env, "logged_popularity", None)
    if logged is not None:
        return logged, "the simulator's log (env.logged_popularity)"
    if training_popularity is not None:
        return training_popularity, "the clicks the agent got while training"
    return None, "none: no log, no training clicks (novelty not reported)"


def item_reference(env: EnvBase, training_popularity: Tensor | None = None) -> ItemReference:
    """The env's item vectors, the self-information of every item (`popularity_reference`) and
    the items of its majority categories (`recrl.diversity.majority_categories`: by the
    popularity reference's interactions, else by the catalogue's own share of each category)."""
    device = env.device
    vectors = getattr(env, "item_vectors", None)
    categories = getattr(env, "item_categories", None)
    popularity, _ = popularity_reference(env, training_popularity)
    information = None if popularity is None else self_information(popularity.to(device))
    in_majority = None
    if categories is not None:
        categories = categories.to(device)
        weights = torch.ones(categories.shape, dtype=torch.float64, device=device)
        if popularity is not None:
            weights = popularity.to(device).double()
        in_majority = majority_categories(categories, weights).double()
        if weights[1:].sum() <= 0:  # no interaction yet (the first validation): undefined
            in_majority = torch.full_like(in_majority, torch.nan)
    return ItemReference(None if vectors is None else vectors.to(device), information,
                         in_majority)


#: The keys of `summarise` that say how recommendations spread over the catalogue, in the order
#: tables print them, with their column headers; all but the first two are left out where the
#: env cannot provide them (docs/evaluation.md).
ITEM_METRICS = {"coverage": "coverage", "exposure_gini": "exposure Gini", "ild": "ILD",
                "novelty": "novelty", "mcd": "MCD"}

#: The list metrics of slates (`summarise`), with their column headers.
SLATE_METRICS = {"slate_ndcg": "slate NDCG", "slate_ild": "slate ILD"}

#: Steps between two checks whether every evaluation episode has ended. Each check reads a
#: flag back from the device (a host synchronisation); users who have left are not counted
#: between checks, so the numbers do not depend on it.
DONE_CHECK_EVERY = 16


@torch.no_grad()
def play_episodes(env: EnvBase, policy: Policy, max_steps: int = 10_000,
                  training_popularity: Tensor | None = None) -> Episodes:
    """Runs one episode per user in ``env`` (all users batched).

    Users whose episode has ended keep being stepped with the rest of the batch (the batch is
    stepped as one tensor), but nothing they do afterwards is counted. The totals stay on the
    environment's device until the end: a GPU evaluation synchronises with the host once every
    `DONE_CHECK_EVERY` steps, not at every step. Besides the totals it keeps what the item-level
    metrics need (`item_reference`; ``training_popularity``: see `popularity_reference`): item
    exposure counts and running sums per user, and, where the env has item vectors, every
    user's recommendations ([T, U] int64, 0 once the user has left) for intra-list diversity.
    """
    num_users, device = env.batch_size[0], env.device
    reference = item_reference(env, training_popularity)
    slate_size = getattr(env, "slate_size", 1)
    f64 = {"dtype": torch.float64, "device": device}
    returns, clicks, lengths = (torch.zeros(num_users, **f64) for _ in range(3))
    novelty = None if reference.information is None else torch.zeros(num_users, **f64)
    dominated = None if reference.in_majority is None else torch.zeros(num_users, **f64)
    actions: list[Tensor] | None = None if reference.vectors is None else []
    times_recommended = torch.zeros(env.num_items + 1, **f64)
    alive = torch.ones(num_users, dtype=torch.bool, device=device)
    slates = None
    if slate_size > 1:
        with_ndcg = getattr(env, "has_expected_reward", False)
        slates = SlateStats(
            slate_size, torch.zeros(slate_size, **f64),
            torch.zeros(num_users, **f64) if with_ndcg else None,
            None if reference.vectors is None else torch.zeros(num_users, **f64))
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        td = env.reset()
        for step in range(max_steps):
            relevance = (env.expected_immediate_reward()
                         if slates is not None and slates.ndcg is not None else None)
            td = env.step(policy(td))
            action = td["action"]  # [U], or [U, k] for slates
            counted = alive.double()
            per_item = counted if slate_size == 1 else counted[:, None].expand(action.shape)
            times_recommended.index_add_(0, action.reshape(-1), per_item.reshape(-1))
            if novelty is not None:
                novelty += (reference.information[action] * per_item).reshape(num_users, -1).sum(1)
            if dominated is not None:
                dominated += (reference.in_majority[action] * per_item).reshape(
                    num_users, -1).sum(1)
            if actions is not None:
                actions.append(action.where(alive, 0) if slate_size == 1
                               else action.where(alive[:, None], 0))
            nxt = td["next"]
            if slates is not None:
                chosen = chosen_position(nxt["history_response"], slate_size)  # [U], -1: none
                hit = (chosen[:, None] == torch.arange(slate_size, device=device)) & alive[:, None]
                slates.click_positions.add_(hit.double().sum(0))
                if slates.ndcg is not None:
                    slates.ndcg.add_(slate_ndcg(action, relevance) * counted)
                if slates.diversity is not None:
                    slates.diversity.add_(slate_diversity(action, reference.vectors) * counted)
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
    diversity = (None if actions is None else episode_diversity(
        torch.stack(actions, dim=1).reshape(num_users, -1), reference.vectors))
    if slates is not None:
        slates = SlateStats(slate_size, *(None if t is None else t.cpu() for t in slates[1:]))
    return Episodes(*(None if t is None else t.cpu() for t in (
        returns, clicks, lengths, times_recommended, diversity, novelty, dominated)), slates)


def summarise(episodes: Episodes) -> dict[str, float]:
    """Mean return, clicks per episode and episode length with 95% CIs over users, the
    click-through rate (clicks / recommendations), and how the recommendations spread over the
    catalogue (docs/evaluation.md defines each):

    - ``coverage``: share of items recommended at least once to anybody;
    - ``exposure_gini``: Gini coefficient of the items' recommendation counts;
    - ``ild``: intra-list diversity, the mean over episodes (of two items or more) of the mean
      dissimilarity of an episode's pairs of recommendations;
    - ``novelty``: the mean over episodes of the mean self-information (bits) of an episode's
      recommendations;
    - ``mcd``: majority-category domination, the share of all recommendations that fall in the
      majority categories.

    The last three are left out where `Episodes` has no input for them. Slates add the list
    metrics (`SLATE_METRICS`): ``ctr`` is then clicks per slate, ``click_positions`` the share of
    clicks at each slate position, ``slate_ndcg`` the mean NDCG of a slate against the
    simulator's true preferences (where it has them) and ``slate_ild`` the mean diversity inside
    a slate; ``novelty`` and ``mcd`` count every item of a slate.
    """
    per_step = 1 if episodes.slates is None else episodes.slates.slate_size
    return_mean, return_ci95 = mean_ci95(episodes.returns)
    clicks_mean, clicks_ci95 = mean_ci95(episodes.clicks)
    length_mean, length_ci95 = mean_ci95(episodes.lengths)
    metrics = {
        "return_mean": return_mean,
        "return_ci95": return_ci95,
        "clicks_mean": clicks_mean,
        "clicks_ci95": clicks_ci95,
        "ctr": (episodes.clicks.sum() / episodes.lengths.sum()).item(),
        "episode_length": length_mean,
        "episode_length_ci95": length_ci95,
        "coverage": episodes.recommended[1:].double().mean().item(),
        "exposure_gini": gini(episodes.exposure[1:]),
    }
    if episodes.diversity is not None:
        metrics["ild"] = episodes.diversity.nanmean().item()
    if episodes.novelty is not None:
        metrics["novelty"] = (episodes.novelty / (episodes.lengths * per_step)).mean().item()
    if episodes.dominated is not None:
        metrics["mcd"] = (episodes.dominated.sum() / (episodes.lengths.sum() * per_step)).item()
    if episodes.slates is not None:
        slates = episodes.slates
        metrics["slate_size"] = slates.slate_size
        total = slates.click_positions.sum()
        metrics["click_positions"] = (slates.click_positions / total.clamp(min=1)).tolist()
        if slates.ndcg is not None:
            metrics["slate_ndcg"] = (slates.ndcg.sum() / episodes.lengths.sum()).item()
        if slates.diversity is not None:
            metrics["slate_ild"] = (slates.diversity.sum() / episodes.lengths.sum()).item()
    metrics["num_users"] = episodes.returns.numel()
    return metrics


def evaluate_policy(env: EnvBase, policy: Policy, max_steps: int = 10_000,
                    training_popularity: Tensor | None = None) -> dict[str, float]:
    """One episode per user in ``env`` under ``policy``, summarised (`summarise`)."""
    return summarise(play_episodes(env, policy, max_steps, training_popularity))


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
    training_popularity: Tensor | None = None,
) -> Episodes:
    """One episode for each of the ``num_users`` users of ``make_env(num_users, seed)``
    (``training_popularity``: what novelty measures against without a log, see
    `popularity_reference`).

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
        episodes = play_episodes(env, policy_for_env(env), max_steps, training_popularity)
    if world_size > 1:
        box = [episodes]  # play_episodes returns CPU tensors
        dist.broadcast_object_list(box, src=0, group=_broadcast_group())
        episodes = box[0]
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
