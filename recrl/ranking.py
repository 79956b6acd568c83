"""Offline ranking metrics on the leave-one-out targets: HR@K and NDCG@K.

Published HR/NDCG numbers differ several-fold by protocol, so every number here is labelled with
the protocol that produced it (``PROTOCOL_DESCRIPTIONS``):

- ``full``: the target is ranked against every catalogue item;
- ``sampled_uniform_<n>``: against ``n`` negatives drawn uniformly (SASRec's protocol);
- ``sampled_popularity_<n>``: against ``n`` negatives drawn proportionally to their training
  interaction counts (BERT4Rec's protocol).

Protocol choices, shared by all three:

- **Excluded items**: every item the user interacted with before the target (the whole prefix,
  not just the encoder's window) and padding id 0 are neither ranked nor sampled as negatives,
  as in SASRec/BERT4Rec; the target itself always stays a candidate, even if the user had seen
  it before (re-consumption).
- **Ties** between the target and other candidates are broken uniformly at random *in
  expectation*: with ``h`` candidates scored strictly higher and ``e`` equal, the target's
  position is uniform on ``h..h+e`` and HR/NDCG are their exact expectations. A constant scorer
  thus gets ``HR@K = K / #candidates``, not 1 (optimistic) or 0 (pessimistic). This is also how
  torchmetrics' NDCG treats ties (sklearn's ``_tie_average_dcg``).
- **Negatives** are distinct, sampled once per user without replacement from the items not
  excluded (popularity: those with a training interaction), in fixed blocks of ``SAMPLE_BLOCK``
  users on the CPU with a ``torch.Generator`` seeded from ``seed`` (one stream per protocol):
  the numbers do not depend on ``chunk_size`` or on the scoring device.

Metrics are computed from ranks with tensor ops, not with torchmetrics' retrieval metrics: those
take one query at a time (``RetrievalHitRate`` with ``indexes`` splits and loops over queries in
Python), which is 40k Python iterations per metric on Amazon Beauty. The tests check agreement
with ``torchmetrics.functional.retrieval`` on random cases.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from recrl.data import Sequences, window_positions
from recrl.observation import CLICKED, MAX_RATING, PADDING

#: ``score_fn(history, history_response, history_watch_time) -> scores [B, N+1]``, higher is
#: better; column 0 (padding) is ignored. ``recrl.encoders.HistoryScorer`` is one.
ScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]

#: A one-line label of each protocol, for tables and plots (keys without the ``_<n>`` suffix).
PROTOCOL_DESCRIPTIONS: dict[str, str] = {
    "full": "full ranking over all N items, items the user saw before the target excluded",
    "sampled_uniform": "target ranked among n uniformly sampled negatives (unseen items)",
    "sampled_popularity": ("target ranked among n negatives sampled proportionally to training "
                           "popularity (unseen items)"),
}
PROTOCOLS = tuple(PROTOCOL_DESCRIPTIONS)
TARGETS = ("test", "valid")

#: Users per block when sampling negatives; fixed so that results do not depend on chunk_size.
SAMPLE_BLOCK = 256


def describe_protocol(key: str) -> str:
    """The label of a result key such as ``"sampled_uniform_100"`` (``n`` filled in)."""
    match = re.fullmatch(r"(sampled_\w+?)_(\d+)", key)
    if match is None:
        return PROTOCOL_DESCRIPTIONS[key]
    return PROTOCOL_DESCRIPTIONS[match[1]].replace("among n ", f"among {match[2]} ")


@dataclass
class RankingInputs:
    """What a scorer sees for each evaluated user, and what it should rank first."""

    history: Tensor  # [U, L] long, most recent last, left-padded with 0
    history_response: Tensor  # [U, L] long, CLICKED for logged items, PADDING for padding
    history_watch_time: Tensor  # [U, L] float, logged rating (or MAX_RATING), 0 for padding
    target: Tensor  # [U] long, the held-out item
    users: Tensor  # [U] long, user indices into ``sequences``


def _select_users(sequences: Sequences, users: Tensor | None) -> Tensor:
    """User indices as a long tensor: all users, a bool mask [U] or indices."""
    if users is None:
        return torch.arange(sequences.num_users)
    users = torch.as_tensor(users)
    if users.dtype == torch.bool:
        return users.nonzero().squeeze(1)
    return users.long()


def _target_positions(sequences: Sequences, users: Tensor, target: str) -> Tensor:
    """Index into ``sequences.items`` of each user's target: last item (test) or the one before
    it (valid); everything before it is the user's prefix."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    back = 1 if target == "test" else 2
    short = sequences.lengths[users] < back
    if short.any():
        raise ValueError(f"{int(short.sum())} users have fewer than {back} items: no {target} item")
    return sequences.offsets[users + 1] - back


def leave_one_out_inputs(sequences: Sequences, history_length: int, target: str = "test",
                         users: Tensor | None = None) -> RankingInputs:
    """The ``history_length`` items right before each user's target, in the encoders' format.

    Every logged item counts as clicked, with its logged rating as watch time (``MAX_RATING`` for
    logs without ratings), as the logged env's start histories do.
    """
    users = _select_users(sequences, users)
    end = _target_positions(sequences, users, target)  # [U], exclusive end of the window
    source, valid = window_positions(sequences.offsets[users], end, history_length)  # [U, L]
    history = torch.where(valid, sequences.items[source], 0)
    response = torch.where(valid, CLICKED, PADDING)
    if sequences.ratings is not None:
        watch_time = torch.where(valid, sequences.ratings[source], 0.0)
    else:
        watch_time = torch.where(valid, MAX_RATING, 0.0)
    return RankingInputs(history=history, history_response=response,
                         history_watch_time=watch_time.float(),
                         target=sequences.items[end], users=users)


def seen_mask(sequences: Sequences, users: Tensor, target: str = "test") -> Tensor:
    """``[C, N+1]`` bool: True for items excluded from ranking for each user of ``users``.

    Those are every item in the user's prefix before the target (not only the history window)
    and padding 0; the target itself is never excluded.
    """
    users = _select_users(sequences, users)
    end = _target_positions(sequences, users, target)
    start = sequences.offsets[users]
    prefix = end - start  # [C]
    row = torch.repeat_interleave(torch.arange(users.numel()), prefix)  # [P]
    first = torch.cumsum(prefix, 0) - prefix  # [C], where each user's run starts in ``row``
    source = start[row] + torch.arange(row.numel()) - first[row]  # [P]
    mask = torch.zeros(users.numel(), sequences.num_items + 1, dtype=torch.bool)
    mask[row, sequences.items[source]] = True
    mask[:, 0] = True
    mask[torch.arange(users.numel()), sequences.items[end]] = False
    return mask


def _first_distinct(candidates: Tensor, allowed: Tensor, num: int) -> tuple[Tensor, Tensor]:
    """Per row of ``candidates`` [T, D] (draws in order), the first ``num`` distinct allowed
    items ``[T, num]``, and whether the row had that many ``[T]``."""
    order = candidates.argsort(dim=1, stable=True)  # equal items keep draw order
    ordered = candidates.gather(1, order)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    earlier = torch.empty_like(repeat).scatter_(1, order, repeat)  # drawn before in this row
    keep = allowed.gather(1, candidates) & ~earlier
    first = (~keep).to(torch.uint8).argsort(dim=1, stable=True)[:, :num]  # kept, in draw order
    return candidates.gather(1, first), keep.sum(1) >= num


def sample_negatives(seen: Tensor, target: Tensor, num: int = 100, weights: Tensor | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """``[C, num]`` distinct negatives per row, never the target, a seen item or 0.

    Uniform over the allowed items when ``weights`` is None, else proportional to ``weights``
    ``[N+1]`` (items of weight 0 are never drawn), without replacement, seeded by ``generator``.

    Sampling without replacement is done as successive sampling: items are drawn i.i.d. from the
    whole catalogue and each row keeps its first ``num`` distinct allowed draws, which has exactly
    the distribution of ``torch.multinomial(masked_weights, num, replacement=False)`` at a cost of
    O(draws) instead of O(N) per row (``multinomial`` takes 0.8 s per 256 users on 54k items).
    A row's stream is extended until it has ``num`` items; rows still short after
    ``128 * num`` draws (allowed items hold under ~1% of the weight) fall back to ``multinomial``.
    """
    num_rows, num_columns = seen.shape
    device = seen.device
    rows = torch.arange(num_rows, device=device)
    allowed = ~seen
    allowed[:, 0] = False
    allowed[rows, target.to(device)] = False
    if weights is not None:
        weights = weights.to(device, torch.float)
        allowed &= weights > 0
    available = allowed.sum(1, dtype=torch.int32)
    if (available < num).any():
        raise ValueError(
            f"a user has only {int(available.min())} items to sample {num} negatives from "
            "(unseen, not the target, positive weight); lower num_negatives"
        )

    def draw(count: int, per_row: int) -> Tensor:
        if weights is None:
            return torch.randint(1, num_columns, (count, per_row), generator=generator,
                                 device=device)
        return torch.multinomial(weights, count * per_row, replacement=True,
                                 generator=generator).view(count, per_row)

    result = torch.empty(num_rows, num, dtype=torch.long, device=device)
    todo = rows
    candidates = draw(num_rows, 2 * num)
    while True:
        picked, done = _first_distinct(candidates, allowed[todo], num)
        result[todo[done]] = picked[done]
        todo, candidates = todo[~done], candidates[~done]
        if todo.numel() == 0:
            return result
        if candidates.shape[1] >= 128 * num:
            break
        candidates = torch.cat([candidates, draw(todo.numel(), 3 * candidates.shape[1])], dim=1)
    base = torch.ones(num_columns, device=device) if weights is None else weights
    result[todo] = torch.multinomial(torch.where(allowed[todo], base, 0.0), num,
                                     replacement=False, generator=generator)
    return result


def target_rank(scores: Tensor, target: Tensor, excluded: Tensor | None = None,
                candidates: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(higher, equal)`` [C]: how many candidates score strictly above the target, and how
    many other candidates score the same.

    Candidates are all columns not ``excluded`` (full ranking), or the items ``candidates``
    ``[C, n]`` (sampled negatives; the target is not among them).
    """
    target_score = scores.gather(1, target[:, None])  # [C, 1]
    if torch.isnan(target_score).any():  # other NaN scores compare false: ranked last
        raise ValueError("score_fn returned NaN for a target; it would rank first")
    if candidates is not None:
        other = scores.gather(1, candidates)  # [C, n]
        return (other > target_score).sum(1), (other == target_score).sum(1)
    allowed = ~excluded
    # int32 sums: twice as fast as the default int64 over [256, 54k] on a CPU
    higher = ((scores > target_score) & allowed).sum(1, dtype=torch.int32)
    equal = ((scores == target_score) & allowed).sum(1, dtype=torch.int32) - 1  # not the target
    return higher, equal


def ranking_metrics(higher: Tensor, equal: Tensor, ks: Sequence[int]) -> dict[str, Tensor]:
    """Per-user ``HR@K`` and ``NDCG@K`` [C], exact expectations over random tie-breaking.

    The target's position is uniform on ``higher .. higher + equal`` (0 = first); HR@K counts the
    positions below K, NDCG@K averages ``1 / log2(position + 2)`` over them (0 at or past K).
    """
    higher, equal = higher.double(), equal.double()
    top = max(ks)
    discount = 1.0 / torch.log2(torch.arange(top, dtype=torch.float64, device=higher.device) + 2)
    cumulative = torch.cat([discount.new_zeros(1), discount.cumsum(0)])  # [K+1], sum below p
    ties = equal + 1
    metrics = {}
    for k in ks:
        low = higher.clamp(max=k)
        high = (higher + ties).clamp(max=k)
        metrics[f"HR@{k}"] = (high - low) / ties
        metrics[f"NDCG@{k}"] = (cumulative[high.long()] - cumulative[low.long()]) / ties
    return metrics


def log_popularity(sequences: Sequences, users: Tensor) -> Tensor:
    """``[N+1]`` float: interactions of each item over the whole sequences of ``users`` ([U]
    bool), e.g. the simulator's training users for its most-popular baseline."""
    selected = torch.repeat_interleave(users, sequences.lengths)  # [I] per interaction
    return torch.bincount(sequences.items[selected],
                          minlength=sequences.num_items + 1).float()


def popularity_scores(sequences: Sequences) -> Tensor:
    """``[N+1]`` float: each item's interaction count in the training part of leave-one-out
    (validation and test items excluded, so the test targets do not leak into it)."""
    train_items, _, _, _ = sequences.leave_one_out()
    return torch.bincount(train_items, minlength=sequences.num_items + 1).float()


def most_popular_scorer(sequences: Sequences) -> ScoreFn:
    """The most-popular baseline as a ``ScoreFn``: every user gets the training counts."""
    counts = popularity_scores(sequences)

    def score_fn(history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        return counts.to(history.device).expand(history.shape[0], -1)

    return score_fn


def _sample_all_negatives(sequences: Sequences, users: Tensor, target: str, num: int,
                          weights: Tensor | None, seed: int) -> Tensor:
    """``[U, num]`` negatives of every selected user, in blocks of ``SAMPLE_BLOCK`` users."""
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for start in range(0, users.numel(), SAMPLE_BLOCK):
        block = users[start : start + SAMPLE_BLOCK]
        seen = seen_mask(sequences, block, target)
        targets = sequences.items[_target_positions(sequences, block, target)]
        blocks.append(sample_negatives(seen, targets, num, weights, generator))
    return torch.cat(blocks)


@torch.no_grad()
def evaluate_ranking(
    score_fn: ScoreFn,
    sequences: Sequences,
    *,
    history_length: int,
    target: str = "test",
    users: Tensor | None = None,
    ks: Sequence[int] = (10, 20),
    num_negatives: int = 100,
    protocols: Sequence[str] = PROTOCOLS,
    seed: int = 0,
    chunk_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, dict[str, float]]:
    """Mean HR@K and NDCG@K over ``users`` (default all) under each protocol.

    Users are scored ``chunk_size`` at a time, so at most ``[chunk_size, N+1]`` scores exist at
    once (Amazon Beauty has 40k users and 54k items). Histories are moved to ``device`` (default:
    left where the sequences are) before ``score_fn``. Keys: ``"full"``,
    ``"sampled_uniform_<n>"``, ``"sampled_popularity_<n>"``; see ``describe_protocol``.
    """
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown:
        raise ValueError(f"unknown protocols {sorted(unknown)}; choose from {PROTOCOLS}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    users = _select_users(sequences, users)
    if users.numel() == 0:
        raise ValueError("no users to evaluate")
    negatives = {}
    for index, protocol in enumerate(PROTOCOLS):
        if protocol in protocols and protocol != "full":
            weights = popularity_scores(sequences) if protocol == "sampled_popularity" else None
            negatives[protocol] = _sample_all_negatives(
                sequences, users, target, num_negatives, weights,
                seed=seed * len(PROTOCOLS) + index,  # independent draws per protocol
            )
    keys = {p: p if p == "full" else f"{p}_{num_negatives}" for p in protocols}
    sums: dict[str, dict[str, float]] = {keys[p]: {} for p in protocols}
    for start in range(0, users.numel(), chunk_size):
        chunk = users[start : start + chunk_size]
        inputs = leave_one_out_inputs(sequences, history_length, target, chunk)
        history, response, watch_time = (inputs.history, inputs.history_response,
                                         inputs.history_watch_time)
        if device is not None:
            history, response, watch_time = (history.to(device), response.to(device),
                                             watch_time.to(device))
        scores = score_fn(history, response, watch_time)
        expected = (chunk.numel(), sequences.num_items + 1)
        if tuple(scores.shape) != expected:
            raise ValueError(f"score_fn returned shape {tuple(scores.shape)}, expected {expected}")
        item = inputs.target.to(scores.device)
        for protocol in protocols:
            if protocol == "full":
                excluded = seen_mask(sequences, chunk, target).to(scores.device)
                higher, equal = target_rank(scores, item, excluded=excluded)
            else:
                candidates = negatives[protocol][start : start + chunk_size].to(scores.device)
                higher, equal = target_rank(scores, item, candidates=candidates)
            total = sums[keys[protocol]]
            for name, values in ranking_metrics(higher, equal, ks).items():
                total[name] = total.get(name, 0.0) + values.sum().item()
    return {key: {name: value / users.numel() for name, value in metrics.items()}
            for key, metrics in sums.items()}
