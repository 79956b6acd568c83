"""Beyond return: how diverse, novel and evenly spread a policy's recommendations are.

Pure functions of tensors; `recrl.evaluation` feeds them what one evaluation recommended. They
follow EasyRL4Rec's evaluation (``src/core/evaluation``: ``metrics.get_diversity``,
``get_novelty``, ``utils.get_feat_dominate_dict``) where it makes sense, so the numbers read
like the peers'; docs/evaluation.md says where and why they differ.

Item ids run 1..N with 0 the padding id; a recommendation tensor uses 0 for "no
recommendation" (a step after the user left), so 0 doubles as the validity mask.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: EasyRL4Rec's ``top_rate``: the majority categories are the most popular ones that together
#: hold at most this share of the reference interactions.
MAJORITY_SHARE = 0.8

#: Elements of one block of pairwise distances ([users, T, T]) `episode_diversity` holds at
#: once: a few tens of MB, whatever the number of users or the episode length.
PAIR_BLOCK_ELEMENTS = 1 << 22


def dissimilarity(distance: Tensor) -> Tensor:
    """``1 - 1 / (1 + d)`` = ``d / (1 + d)``: EasyRL4Rec's ``1 - similarity`` with its Coat /
    Yahoo similarity ``1 / (1 + Euclidean distance)``. Bounded in [0, 1), so one far outlier
    does not dominate a session's mean, and 0 for a repeated item."""
    return distance / (1.0 + distance)


def episode_diversity(actions: Tensor, vectors: Tensor,
                      block_elements: int = PAIR_BLOCK_ELEMENTS) -> Tensor:
    """Intra-list diversity of each episode, [U] float64: the mean `dissimilarity` over every
    unordered pair of its recommendations (repeats included, as EasyRL4Rec counts them).

    ``actions`` [U, T] int64 (0 where nothing was recommended); ``vectors`` [N+1, D] float.
    Episodes with fewer than two recommendations have no pair: NaN (EasyRL4Rec says 1.0, which
    would reward a policy whose users leave at once).

    Two exact ways to the same sums, the cheaper one is taken: a small catalogue's item-by-item
    dissimilarities once, weighted by how often each user got each item (`_pair_sums_by_item`,
    ~U N^2 work: long synthetic sessions over 500 items), else the distances between each
    user's own recommendations (`_pair_sums_by_step`, ~U T^2 D: short sessions, large logs).
    Either holds at most about ``block_elements`` numbers at once.
    """
    num_users, steps = actions.shape
    num_items = vectors.shape[0]
    vectors = vectors.to(actions.device, torch.float64)
    valid = (actions > 0).double()
    if num_items * num_items <= block_elements and num_items ** 2 < steps ** 2 * vectors.shape[1]:
        pair_sum = _pair_sums_by_item(actions, valid, vectors, block_elements)
    else:
        pair_sum = _pair_sums_by_step(actions, valid, vectors, block_elements)
    length = valid.sum(1)
    pairs = length * (length - 1)  # ordered pairs: both sums count each pair twice
    return torch.where(pairs > 0, pair_sum / pairs.clamp(min=1), torch.nan)


def _exact_dissimilarity(a: Tensor, b: Tensor) -> Tensor:
    # Not cdist's matrix-product shortcut: a repeated item must be at distance exactly 0.
    return dissimilarity(torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist"))


def _pair_sums_by_step(actions: Tensor, valid: Tensor, vectors: Tensor,
                       block_elements: int) -> Tensor:
    """Sum over each user's ordered pairs of recommendations of their dissimilarity, [U]: blocks
    of users whose [u, T, T] distances hold about ``block_elements`` numbers."""
    num_users, steps = actions.shape
    per_block = max(1, block_elements // max(steps * steps, 1))
    sums = torch.empty(num_users, dtype=torch.float64, device=actions.device)
    for start in range(0, num_users, per_block):
        rows = slice(start, start + per_block)
        points = vectors[actions[rows]]  # [u, T, D]
        mask = valid[rows, :, None] * valid[rows, None, :]  # [u, T, T]
        sums[rows] = (_exact_dissimilarity(points, points) * mask).sum((1, 2))
    return sums


def _pair_sums_by_item(actions: Tensor, valid: Tensor, vectors: Tensor,
                       block_elements: int) -> Tensor:
    """The same sums as `_pair_sums_by_step` from item counts: ``c_u^T F c_u`` with ``c_u`` how
    often user u got each item and ``F`` the [N+1, N+1] item dissimilarities (0 on the diagonal,
    as a pair of one item twice has)."""
    num_users, num_items = actions.shape[0], vectors.shape[0]
    table = _exact_dissimilarity(vectors, vectors)  # [N+1, N+1]
    per_block = max(1, block_elements // num_items)
    sums = torch.empty(num_users, dtype=torch.float64, device=actions.device)
    for start in range(0, num_users, per_block):
        rows = slice(start, start + per_block)
        counts = torch.zeros(actions[rows].shape[0], num_items, dtype=torch.float64,
                             device=actions.device)
        counts.scatter_add_(1, actions[rows], valid[rows])  # [u, N+1]; 0 (padding) never counted
        sums[rows] = ((counts @ table) * counts).sum(1)
    return sums


def gini(counts: Tensor) -> float:
    """Gini coefficient of non-negative ``counts`` (one per item): 0 when every item is
    exposed equally, ``1 - 1/n`` when one item gets everything. NaN for all-zero counts.

    With ``x`` sorted ascending and ranks ``i = 1..n``:
    ``G = sum_i (2 i - n - 1) x_i / (n sum_i x_i)`` (the standard formula, no small-sample
    correction, so it reads the same for any catalogue size up to its ``1 - 1/n`` ceiling).
    """
    x = counts.double().flatten().sort().values
    n, total = x.numel(), x.sum()
    if n == 0 or total <= 0:
        return math.nan
    rank = torch.arange(1, n + 1, dtype=torch.float64, device=x.device)
    return ((2 * rank - n - 1) * x).sum().item() / (n * total.item())


def self_information(popularity: Tensor) -> Tensor:
    """``-log2 p(i)`` of every item, [N+1] float64 (0 at padding), ``p`` the item's share of the
    reference interactions ``popularity`` ([N+1] counts, padding ignored).

    Items never seen in the reference get the smallest positive share, as EasyRL4Rec does
    (otherwise one unseen item makes the novelty infinite). All-zero counts: NaN everywhere
    (no reference, no novelty).
    """
    counts = popularity.double().clone()
    counts[0] = 0.0
    total = counts.sum()
    if total <= 0:
        return torch.full_like(counts, torch.nan)
    share = counts / total
    share[1:] = share[1:].clamp(min=share[share > 0].min())
    information = -torch.log2(share[1:])
    return torch.cat([information.new_zeros(1), information])


def majority_categories(categories: Tensor, weights: Tensor,
                        top_share: float = MAJORITY_SHARE) -> Tensor:
    """Whether each item lies in a majority category, [N+1] bool (False at padding).

    ``categories`` [N+1] int64 (0 at padding); ``weights`` [N+1]: each item's share of the
    reference (interaction counts, or ones for the catalogue itself). Categories are ranked by
    their total weight; the majority is the longest prefix of that ranking whose cumulative
    share stays at most ``top_share``, and at least the first category: EasyRL4Rec's
    ``get_feat_dominate_dict`` with its ``top_rate``.
    """
    weights = weights.double().clone()
    weights[0] = 0.0
    per_category = torch.zeros(int(categories.max()) + 1, dtype=torch.float64,
                               device=weights.device)
    per_category.index_add_(0, categories.to(weights.device), weights)
    per_category[0] = 0.0
    share = per_category / per_category.sum()
    order = share.argsort(descending=True, stable=True)  # ties: the lower category id first
    within = share[order].cumsum(0) <= top_share + 1e-9  # float slack: 16 x 0.05 is 0.8
    within[0] = True
    majority = torch.zeros_like(within)
    majority[order] = within
    majority[0] = False  # padding is no category
    in_majority = majority[categories.to(weights.device)]
    in_majority[0] = False
    return in_majority
