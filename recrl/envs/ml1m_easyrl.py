"""EasyRL4Rec's MovieLens-1M environment (Yu et al. 2024), on `RatingMatrixEnv`.

EasyRL4Rec's ML-1M world (``data/MovieLens/provide_MF_results.py``, ``MovieLensEnv``): a
matrix factorisation without biases, 6 factors, fitted on 90% of the ratings (a random split,
``random_state=42``), predicts every user's rating of every movie, clipped to [0, 5]; that matrix
is the reward and its item columns give the quit rule's distances (threshold 75, window 7, at most
30 turns). Agents train in a world learnt from the other 10% (EasyRL4Rec's "train" file).

recrl rebuilds both from ``ratings.dat`` (``python -m recrl.data download ml-1m``), seeded, with
its own full-batch fit (`fit_rating_model`): EasyRL4Rec's matrix comes from 80 epochs of SGD with
momentum and is not published, so recrl's true world is the same *recipe*, not the same numbers.
Differences, stated: only rated movies are items (3,706; EasyRL4Rec's matrix also has columns for
the 246 unrated ids up to 3,952, whose untrained factors are noise); since the distance scale
depends on the fit, the quit threshold is by default a quantile of item-pair distances
(``leave_quantile`` 0.3: EasyRL4Rec notes that its 75 was about the 30th percentile of its
distances; ``leave_threshold`` gives an absolute one instead);
a movie's category (for MCD) is its first listed genre.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import torch

from recrl.data.formats import read_movielens_dat
from recrl.envs.coat import RatingMatrixEnv, RatingWorld, check_choices, fit_rating_model, quit_distances

log = logging.getLogger(__name__)

__all__ = ["ML1MEasyRLEnv", "load_ml1m_world"]


@functools.lru_cache(maxsize=2)
def load_ml1m_world(path: str, true_fraction: float = 0.9, split_seed: int = 42,
                    true_dim: int = 6, true_epochs: int = 300, fit_dim: int = 16,
                    fit_weight_decay: float = 0.3, fit_epochs: int = 300) -> RatingWorld:
    """Reads ``ratings.dat`` (and ``movies.dat`` for genres) from ``path`` and fits both worlds."""
    if not 0.0 < true_fraction < 1.0:
        raise ValueError(f"env.true_fraction must be in (0, 1), got {true_fraction}")
    raw = read_movielens_dat(Path(path))
    frame = raw.interactions
    users, user_ids = torch.unique(torch.as_tensor(frame["user"].to_numpy().copy()), return_inverse=True)
    items, item_ids = torch.unique(torch.as_tensor(frame["item"].to_numpy().copy()), return_inverse=True)
    ratings = torch.as_tensor(frame["rating"].to_numpy().copy(), dtype=torch.float32)
    generator = torch.Generator().manual_seed(split_seed)
    in_true = torch.rand(ratings.numel(), generator=generator) < true_fraction
    shape = (users.numel(), items.numel())

    def dense(mask: torch.Tensor) -> torch.Tensor:
        matrix = torch.zeros(shape)
        matrix[user_ids[mask], item_ids[mask]] = ratings[mask]
        return matrix

    world_log, agent_log = dense(in_true), dense(~in_true)
    true = fit_rating_model(world_log, None, dim=true_dim, weight_decay=0.0, epochs=true_epochs,
                            biases=False, clip=(0.0, 5.0))
    learnt = fit_rating_model(agent_log, None, dim=fit_dim, weight_decay=fit_weight_decay,
                              epochs=fit_epochs, clip=(0.0, 5.0))
    log.info("ml1m_easyrl: %d users x %d movies; true world from %d ratings, training world from "
             "%d", *shape, int(in_true.sum()), int((~in_true).sum()))
    return RatingWorld(
        true_ratings=true, learnt_ratings=learnt, distance=quit_distances(true),
        item_categories=_first_genres(raw.items, items), logged_popularity=(agent_log > 0)
        .sum(0).float(), logged_ratings=agent_log,
    )


def _first_genres(movies, item_ids: torch.Tensor) -> torch.Tensor | None:
    """Each movie's first listed genre as a category id from 1, or None without movies.dat."""
    if movies is None:
        return None
    first = movies.set_index("item")["genres"].astype(str).str.split("|").str[0]
    names = first.reindex(item_ids.numpy()).fillna("(unknown)")
    codes = {name: k + 1 for k, name in enumerate(sorted(names.unique()))}
    return torch.tensor(names.map(codes).to_numpy(), dtype=torch.long)


class ML1MEasyRLEnv(RatingMatrixEnv):
    """EasyRL4Rec's ML-1M environment (module docstring; conf/env/ml1m_easyrl.yaml documents
    every argument)."""

    def __init__(self, num_users: int, *, path: str, true_fraction: float = 0.9,
                 split_seed: int = 42, true_dim: int = 6, true_epochs: int = 300,
                 fit_dim: int = 16, fit_weight_decay: float = 0.3, fit_epochs: int = 300,
                 leave_threshold: float | None = None, leave_quantile: float = 0.3,
                 user_split: str = "train", train_reward: str = "learnt", **protocol) -> None:
        check_choices(user_split, train_reward)
        if leave_threshold is None and not 0.0 <= leave_quantile < 1.0:
            raise ValueError(f"env.leave_quantile must be in [0, 1), got {leave_quantile}")
        world = load_ml1m_world(str(path), true_fraction, split_seed, true_dim, true_epochs,
                                fit_dim, fit_weight_decay, fit_epochs)
        if leave_threshold is None:  # EasyRL4Rec's 75 was ~ the 30th percentile of its distances
            leave_threshold = distance_quantile(world.distance, leave_quantile)
        super().__init__(num_users, world, user_split=user_split, train_reward=train_reward,
                         leave_threshold=leave_threshold, **protocol)


def distance_quantile(distance: torch.Tensor, quantile: float) -> float:
    """``quantile`` of the distances between distinct items (upper triangle; subsampled to 1M
    pairs with a fixed seed above that, as ``torch.quantile`` caps its input size)."""
    rows, cols = torch.triu_indices(*distance.shape, offset=1)
    values = distance[rows, cols]
    if values.numel() > 1_000_000:
        pick = torch.randperm(values.numel(), generator=torch.Generator().manual_seed(0))
        values = values[pick[:1_000_000]]
    return torch.quantile(values, quantile).item()
