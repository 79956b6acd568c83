"""EasyRL4Rec's rating-matrix environments (Yu et al. 2024), batched: Coat and ML-1M.

The protocol, as EasyRL4Rec's code defines it (``src/core/envs/BaseEnv.py``, ``Coat/CoatEnv.py``):

- **The world** is a full user x item reward matrix ``R`` (Coat: the "pseudo ground truth"
  ratings of RL4Rec, Huang et al. RecSys 2020, 290 x 300, integers 1-5). Recommending item ``i``
  to user ``u`` earns ``R[u, i]``, every turn, repeats included ("free" mode).
- **Episodes** start from a uniformly random user and a uniformly random initial item (shown to
  the agent as the first item of its history; it earns nothing and is not part of the quit window).
- **Quitting** ("boredom"): the user leaves after the turn whose item lies within Euclidean
  distance ``leave_threshold`` of one of the last ``leave_window`` recommended items, distances
  between the item columns of ``R`` (so a repeat inside the window quits at once: distance 0).
  The quitting turn still earns its reward. Coat: threshold 6, window 7; at most 30 turns.
- **Training** happens in a *learnt* world: EasyRL4Rec trains its agents against a DeepFM fitted
  on the logged (self-selected, missing-not-at-random) ratings, with the true quit rule, and
  tests them in the true world. recrl fits inverse-propensity-weighted matrix factorisation on
  the same ratings (``train_reward: learnt``; Coat ships the exposure propensities), or trains in
  the true world itself (``train_reward: truth``, a privileged upper reference). Validation users
  are answered by the training world, so choosing weights never looks at the test world; test
  users by the true matrix.

Everything a step does is tensor indexing over the whole batch of users.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tensordict import TensorDict

from recrl.envs.base import RecEnv, UserResponse, UserResponseModel, check_param
from recrl.observation import CLICKED, PADDING

log = logging.getLogger(__name__)

__all__ = ["CoatEnv", "RatingMatrixEnv", "RatingMatrixUsers", "RatingWorld", "TRAIN_REWARDS", "fit_rating_model",
           "load_coat_world", "quit_distances"]

#: The world that answers training (and validation) users: ``learnt`` (a rating model fitted on
#: the logged ratings, EasyRL4Rec's protocol) or ``truth`` (the test world's own matrix).
TRAIN_REWARDS = ("learnt", "truth")
USER_SPLITS = ("train", "validation", "test")

#: Coat's files (Schnabel et al. 2016) and RL4Rec's pseudo-ground-truth matrix, by name.
COAT_FILES = {
    "train": "train.ascii",
    "propensities": "propensities.ascii",
    "true": "coat_pseudoGT_ratingM.ascii",
    "item_features": "user_item_features/item_features.ascii",
}
#: Column groups of Coat's one-hot item features: gender (2), jacket type (16), colour (13),
#: on the front page (2) (EasyRL4Rec's CoatData.load_item_feat).
COAT_ITEM_FEATURE_GROUPS = {"gender": (0, 2), "jackettype": (2, 18), "color": (18, 31),
                            "onfrontpage": (31, 33)}


class CoatDataError(FileNotFoundError):
    """Coat's files are missing or malformed; the message names the file and the fix."""


@dataclass(frozen=True)
class RatingWorld:
    """Everything the envs of one configuration share (built once per process)."""

    true_ratings: Tensor  # [U, N] float32: the test world's reward
    learnt_ratings: Tensor  # [U, N] float32: the rating model fitted on the logged ratings
    distance: Tensor  # [N, N] float32: Euclidean distances between item columns of true_ratings
    item_categories: Tensor | None  # [N] int64 category ids from 1, or None
    logged_popularity: Tensor  # [N] float32: logged ratings per item (novelty, most-popular)
    logged_ratings: Tensor  # [U, N] float32: the self-selected ratings (0 = none), the log


def quit_distances(true_ratings: Tensor) -> Tensor:
    """Euclidean distance between every two item columns of the reward matrix, [N, N].

    EasyRL4Rec computes it on the *true* matrix for the training and the test world alike. In
    float64 for small worlds (Coat: exact), float32 for large ones (ML-1M's 3,706 x 6,040: the
    difference is far below any threshold); the diagonal is exactly 0 (a repeat always quits)."""
    dtype = torch.float64 if true_ratings.numel() <= 1_000_000 else torch.float32
    columns = true_ratings.T.to(dtype)
    distance = torch.cdist(columns, columns).float()
    return distance.fill_diagonal_(0.0)


def fit_rating_model(ratings: Tensor, propensities: Tensor | None, *, dim: int = 16,
                     weight_decay: float = 0.3, epochs: int = 300, lr: float = 0.02,
                     biases: bool = True, clip: tuple[float, float] | None = None,
                     seed: int = 0) -> Tensor:
    """Matrix factorisation ``mu + b_u + b_i + <p_u, q_i>`` (``biases=False``: ``<p_u, q_i>``
    alone) of the observed entries of ``ratings`` ([U, N], 0 = unobserved), each weighted by
    ``1 / propensity`` when propensities are given (IPS: the self-selected ratings over-represent
    what users chose to rate). Full-batch Adam (seconds for Coat, ~a minute for ML-1M). Returns
    the completed matrix clipped to ``clip`` (default: the observed rating range)."""
    users, items = ratings.nonzero(as_tuple=True)
    target = ratings[users, items]
    weight = torch.ones_like(target)
    if propensities is not None:
        weight = 1.0 / propensities[users, items]
        weight = weight / weight.mean()
    generator = torch.Generator().manual_seed(seed)
    num_users, num_items = ratings.shape
    user_vectors = (0.05 * torch.randn(num_users, dim, generator=generator)).requires_grad_()
    item_vectors = (0.05 * torch.randn(num_items, dim, generator=generator)).requires_grad_()
    user_bias = torch.zeros(num_users, requires_grad=True)
    item_bias = torch.zeros(num_items, requires_grad=True)
    global_bias = torch.tensor(target.mean().item(), requires_grad=True)
    params = [user_vectors, item_vectors]
    if biases:
        params += [user_bias, item_bias, global_bias]
    else:
        global_bias.data.zero_()
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        score = ((user_vectors[users] * item_vectors[items]).sum(-1) + user_bias[users]
                 + item_bias[items] + global_bias)
        penalty = (user_vectors.pow(2).sum(-1).mean() + item_vectors.pow(2).sum(-1).mean()
                   + user_bias.pow(2).mean() + item_bias.pow(2).mean())
        loss = (weight * (score - target).pow(2)).mean() + weight_decay * penalty
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        full = user_vectors @ item_vectors.T + user_bias[:, None] + item_bias[None, :] + global_bias
        low, high = clip if clip is not None else (target.min().item(), target.max().item())
        return full.clamp(low, high)


def _read_matrix(path: Path, what: str, shape: tuple[int, int] | None = None) -> Tensor:
    if not path.is_file():
        raise CoatDataError(
            f"{path} not found ({what}): get Coat with `python -m recrl.data download coat` "
            f"(into data/), or point RECRL_DATA_DIR / env.path at a folder that holds it")
    try:
        matrix = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as err:
        raise CoatDataError(f"{path}: not a whitespace-separated numeric matrix ({err})") from None
    if shape is not None and matrix.shape != shape:
        raise CoatDataError(f"{path}: expected a {shape[0]} x {shape[1]} matrix ({what}), "
                            f"got {matrix.shape[0]} x {matrix.shape[1]}")
    if not np.isfinite(matrix).all():
        raise CoatDataError(f"{path}: holds NaN or infinite values")
    return torch.from_numpy(matrix).float()


def _item_categories(path: Path, num_items: int, group: str | None) -> Tensor | None:
    """Each item's category (1-based) in one feature group of Coat's one-hot item features."""
    if group is None or not path.is_file():
        return None
    if group not in COAT_ITEM_FEATURE_GROUPS:
        raise ValueError(f"env.category_feature must be one of {sorted(COAT_ITEM_FEATURE_GROUPS)} "
                         f"or null, got {group!r}")
    features = _read_matrix(path, "item features")
    start, stop = COAT_ITEM_FEATURE_GROUPS[group]
    if features.shape[0] != num_items or features.shape[1] < stop:
        raise CoatDataError(f"{path}: expected {num_items} rows of >= {stop} one-hot columns")
    return features[:, start:stop].argmax(dim=1) + 1


@functools.lru_cache(maxsize=4)
def load_coat_world(path: str, fit_dim: int = 16, fit_weight_decay: float = 0.3,
                    fit_epochs: int = 300, ips: bool = True,
                    category_feature: str | None = "jackettype") -> RatingWorld:
    """Reads Coat from ``path`` and fits the training world (once per process and setting)."""
    root = Path(path)
    true = _read_matrix(root / COAT_FILES["true"], "RL4Rec's pseudo-ground-truth ratings")
    logged = _read_matrix(root / COAT_FILES["train"], "the self-selected ratings",
                          tuple(true.shape))
    if ((logged < 0) | (logged > 5)).any() or logged.count_nonzero() == 0:
        raise CoatDataError(f"{root / COAT_FILES['train']}: ratings must be 0 (none) or 1-5")
    propensities = None
    if ips:
        propensities = _read_matrix(root / COAT_FILES["propensities"], "exposure propensities",
                                    tuple(true.shape))
        if not ((propensities > 0) & (propensities <= 1)).all():
            raise CoatDataError(f"{root / COAT_FILES['propensities']}: propensities must lie in "
                                f"(0, 1]")
    learnt = fit_rating_model(logged, propensities, dim=fit_dim, weight_decay=fit_weight_decay,
                              epochs=fit_epochs)
    log.info("coat: true world %d users x %d items (mean reward %.3f); training world fitted "
             "(%s MF, mean %.3f)", *true.shape, true.mean().item(), "IPS" if ips else "naive",
             learnt.mean().item())
    return RatingWorld(
        true_ratings=true, learnt_ratings=learnt, distance=quit_distances(true),
        item_categories=_item_categories(root / COAT_FILES["item_features"], true.shape[1],
                                         category_feature),
        logged_popularity=(logged > 0).sum(0).float(), logged_ratings=logged,
    )


def _padded(matrix: Tensor, fill: float) -> Tensor:
    """``matrix`` with a row and column of ``fill`` in front (item ids start at 1)."""
    out = torch.full((matrix.shape[0] + 1, matrix.shape[1] + 1), fill, dtype=matrix.dtype)
    out[1:, 1:] = matrix
    return out


class RatingMatrixUsers(UserResponseModel):
    """Users who answer with a reward matrix and leave by EasyRL4Rec's quit rule (module doc).

    ``rewards`` [U, N] is this world's reward (the true or the learnt matrix); ``distance``
    [N, N] always the true world's item distances.
    """

    def __init__(self, num_users: int, rewards: Tensor, distance: Tensor, *,
                 history_length: int, leave_threshold: float, leave_window: int,
                 click_rating: float, item_vectors: Tensor | None = None,
                 item_categories: Tensor | None = None, device: torch.device | str = "cpu"
                 ) -> None:
        super().__init__(num_users, rewards.shape[1], device)
        check_param("env.leave_window", leave_window, 1)
        self.history_length = history_length
        self.leave_threshold = float(leave_threshold)
        self.leave_window = leave_window
        self.click_rating = click_rating
        # Column/row 0 is the padding item: reward 0, infinitely far from everything.
        self.rewards = torch.cat([torch.zeros(rewards.shape[0], 1), rewards], dim=1).to(self.device)
        self.distance = _padded(distance, float("inf")).to(self.device)  # [N+1, N+1]
        self._item_vectors = (None if item_vectors is None else
                              torch.cat([torch.zeros(1, item_vectors.shape[1]), item_vectors])
                              .to(self.device))
        self._categories = (None if item_categories is None else
                            torch.cat([torch.zeros(1, dtype=torch.long), item_categories])
                            .to(self.device))
        self.user = torch.zeros(num_users, dtype=torch.long, device=self.device)
        self.start_item = torch.zeros(num_users, dtype=torch.long, device=self.device)
        self.recent = torch.zeros(num_users, leave_window, dtype=torch.long, device=self.device)

    def reset(self, mask: Tensor, generator: torch.Generator) -> None:
        num_world_users = self.rewards.shape[0]
        user = torch.randint(0, num_world_users, (self.num_users,), generator=generator,
                             device=self.device)
        item = torch.randint(1, self.num_items + 1, (self.num_users,), generator=generator,
                             device=self.device)
        self.user = torch.where(mask, user, self.user)
        self.start_item = torch.where(mask, item, self.start_item)
        self.recent = self.recent.where(~mask[:, None], 0)

    def start_history(self, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The random initial item, last in an otherwise empty window; it earned nothing."""
        items = torch.zeros(self.num_users, self.history_length, dtype=torch.long,
                            device=self.device)
        items[:, -1] = self.start_item
        response = torch.where(items != 0, CLICKED, PADDING)
        return items, response, torch.zeros(items.shape, device=self.device)

    def respond(self, action: Tensor, generator: torch.Generator) -> UserResponse:
        reward = self.rewards[self.user, action]  # [B]
        near = self.distance[action[:, None], self.recent] < self.leave_threshold  # [B, W]
        quit_ = near.any(dim=1)  # empty slots (item 0) are infinitely far
        self.recent = torch.cat([self.recent[:, 1:], action[:, None]], dim=1)
        return UserResponse(click=reward >= self.click_rating, watch_time=reward, done=quit_)

    def expected_watch_time(self) -> Tensor:
        return self.rewards[self.user]

    def item_vectors(self) -> Tensor | None:
        """The true world's item columns ([N+1, U]): the distances the quit rule uses."""
        return self._item_vectors

    def item_categories(self) -> Tensor | None:
        return self._categories

    def state_dict(self) -> dict[str, Tensor]:
        return {"user": self.user, "start_item": self.start_item, "recent": self.recent}


class RatingMatrixEnv(RecEnv):
    """EasyRL4Rec's rating-matrix protocol over a `RatingWorld` (module docstring),
    ``batch_size = [num_users]``.

    ``user_split`` "train" and "validation" users are answered by the training world
    (``train_reward``), "test" users by the true matrix. By default nothing is masked: repeats
    are allowed and quit the session, as in EasyRL4Rec's "free" mode. ``mask_history`` hides the
    items of the agent's visible window from every policy (EasyRL4Rec's
    ``--remove_recommended_ids`` policy option, over the last ``history_length`` turns); the users
    and their quit rule are the same either way.
    """

    users: RatingMatrixUsers

    def __init__(self, num_users: int, world: RatingWorld, *, seed: int | None = None,
                 device: torch.device | str = "cpu", user_split: str = "train",
                 train_reward: str = "learnt", history_length: int = 10,
                 leave_threshold: float = 6.0, leave_window: int = 7,
                 max_episode_steps: int = 30, click_rating: float = 4.0,
                 mask_history: bool = False) -> None:
        check_choices(user_split=user_split, train_reward=train_reward)
        check_param("env.leave_threshold", leave_threshold, 0.0)
        true_world = user_split == "test" or train_reward == "truth"
        users = RatingMatrixUsers(
            num_users, world.true_ratings if true_world else world.learnt_ratings,
            world.distance, history_length=history_length, leave_threshold=leave_threshold,
            leave_window=leave_window, click_rating=click_rating,
            item_vectors=world.true_ratings.T, item_categories=world.item_categories,
            device=device,
        )
        super().__init__(users, history_length=history_length, mask_history=mask_history,
                         mask_scope="window", max_episode_steps=max_episode_steps, seed=seed)
        #: Logged ratings per item ([N+1], 0 at padding): the log's popularity.
        self.logged_popularity = torch.cat([torch.zeros(1), world.logged_popularity])
        self._world = world
        self._leave = (leave_threshold, leave_window)

    def logged_transitions(self, seed: int = 0) -> TensorDict:
        """The log as transitions, for offline (batch) RL: what EasyRL4Rec's batch agents learn from.

        Each user's self-selected ratings, in item order (Coat has no timestamps), are replayed as
        recommendations through this env's own rules: a session starts from a random initial item
        (``seed``), every logged item is an action rewarded with its logged rating (a click when
        it reaches ``click_rating``), and the *true* quit rule (or the turn cap) ends a session;
        the user's next logged item then starts a new session from a new random initial item.
        EasyRL4Rec builds its offline buffer the same way (``construct_buffer_from_offline_data``);
        where its buffer marks a user's last logged item terminal, here it is truncated (the log
        ends, the user did not leave).

        Returns ``[T]`` transitions (T = the number of logged ratings) with a collector rollout's
        keys: the observation, ``action``, and ``("next", ...)`` with ``reward`` [T, 1] and the
        done flags. Built once, on the CPU, by stepping all users' logs as one batch.
        """
        logged = self._world.logged_ratings  # [U, N], 0 = not rated
        num_users, num_items = logged.shape
        counts = (logged > 0).sum(1)  # [U]
        item_ids = torch.arange(1, num_items + 1).expand(num_users, -1)
        # Each user's rated items in item order, then num_items + 1 fillers: [U, longest].
        longest = int(counts.max())
        items = torch.where(logged > 0, item_ids, num_items + 1).sort(dim=1).values[:, :longest]
        valid = items <= num_items  # [U, longest]
        threshold, window = self._leave
        users = RatingMatrixUsers(
            num_users, logged, self._world.distance, history_length=self.history_length,
            leave_threshold=threshold, leave_window=window, click_rating=self.users.click_rating,
        )
        replay = RecEnv(users, history_length=self.history_length, mask_history=False,
                        max_episode_steps=self.max_episode_steps, seed=seed)
        own_users = torch.arange(num_users)
        td = replay.reset()
        users.user = own_users  # slot u replays user u, in every session
        steps = []
        for position in range(longest):
            td["action"] = items[:, position].where(valid[:, position], 1)
            out, td = replay.step_and_maybe_reset(td)  # finished sessions start again
            users.user = own_users
            log_ends = ~valid[:, position + 1] if position + 1 < longest else torch.ones(
                num_users, dtype=torch.bool)
            out["next", "truncated"] = out["next", "truncated"] | log_ends[:, None]
            out["next", "done"] = out["next", "terminated"] | out["next", "truncated"]
            steps.append(out)
        rollout = torch.stack(steps, dim=1)  # [U, longest]
        return rollout[valid]


def check_choices(user_split: str, train_reward: str) -> None:
    """One clear error for an unknown split or training world (before any data is read)."""
    if user_split not in USER_SPLITS:
        raise ValueError(f"user_split must be one of {USER_SPLITS}, got {user_split!r}")
    if train_reward not in TRAIN_REWARDS:
        raise ValueError(f"env.train_reward must be one of {TRAIN_REWARDS}, got {train_reward!r}")


class CoatEnv(RatingMatrixEnv):
    """EasyRL4Rec's Coat environment: `RatingMatrixEnv` over `load_coat_world` (conf/env/coat.yaml
    documents every argument)."""

    def __init__(self, num_users: int, *, path: str, ips: bool = True, fit_dim: int = 16,
                 fit_weight_decay: float = 0.3, fit_epochs: int = 300,
                 category_feature: str | None = "jackettype", user_split: str = "train",
                 train_reward: str = "learnt", **protocol) -> None:
        check_choices(user_split, train_reward)
        world = load_coat_world(str(path), fit_dim, fit_weight_decay, fit_epochs, ips,
                                category_feature)
        super().__init__(num_users, world, user_split=user_split, train_reward=train_reward,
                         **protocol)
