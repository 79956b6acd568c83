"""A user simulator fitted on a real interaction log (MovieLens, Amazon, any log recrl reads).

The protocol follows EasyRL4Rec (Yu et al. 2024) and KuaiEnv (Gao et al. 2022):

- **Who**: real users. Each episode draws a user from a split of the log (training users for
  training, held-out users for evaluation) and starts from the first ``L`` items of the user's
  real chronological history (marked clicked, with their logged rating as watch time).
- **What they think of an item**: a matrix-factorisation model fitted on the whole log (it *is*
  the simulated world, not the agent's knowledge): ``r(u, i) = mu + b_u + b_i + <p_u, q_i>`` by
  least squares on ratings, or, for logs without ratings, logistic MF on observed pairs against
  uniformly sampled unobserved ones, scaled to the same 0-5 range. The reward of recommending
  ``i`` is ``r(u, i)`` clipped to ``[0, 5]``; it counts as a click when ``r >= click_rating``.
- **When they leave**: users grow bored of sameness. If the recommended item lies closer (in the
  MF item space) than ``boredom_distance`` to one of the last ``boredom_window`` recommendations,
  the user leaves after this step. ``boredom_distance`` is given as a quantile of the distances
  between random item pairs, so it means the same on every dataset.
- **How long**: at most ``max_episode_steps`` turns (30 by default, EasyRL4Rec's cap).

The fitted model is cached on disk next to the preprocessed data. Its fit logs its progress
(``recrl.envs.logged``), and ``Sequences.summary["taste_model"]`` says how it was fitted and how
often a random recommendation is a click: a world where almost nothing (or almost everything) is
a click teaches nothing, and is flagged with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from recrl.data import DataConfig, PreprocessConfig, Sequences, load_sequences, window_positions
from recrl.data.formats import normalise_options, resolve_source
from recrl.data.preprocess import source_fingerprint
from recrl.envs.base import RecEnv, SlateResponse, UserResponse, UserResponseModel, check_param
from recrl.observation import CLICKED, MAX_RATING, PADDING
from recrl.ranking import log_popularity

log = logging.getLogger(__name__)

#: ``fit_batch_size: null`` fits logs of up to this many interactions full batch (ML-100K's
#: 99k: seconds, and 300 full-batch epochs converge); larger logs in minibatches of
#: ``DEFAULT_MINIBATCH`` pairs, which keep memory flat and converge in far fewer epochs.
FULL_BATCH_MAX_INTERACTIONS = 100_000
DEFAULT_MINIBATCH = 65_536
#: Progress lines per fit (one every ``epochs / FIT_LOG_LINES`` epochs, and the last).
FIT_LOG_LINES = 10
#: (user, item) pairs sampled to measure how often a random recommendation is a click, and the
#: shares below / above which the fitted world is called degenerate: nearly nothing to find, or
#: a click that says nothing. For reference: ML-100K 33%, Amazon Beauty 0.5% (54k items, sparse
#: but learnable: the myopic oracle's sessions are clicks throughout).
CLICK_SAMPLE_PAIRS = 100_000
DEGENERATE_CLICK_SHARE = (0.001, 0.95)


@dataclass(frozen=True)
class FitConfig:
    """Matrix factorisation of the log (the simulated users' tastes)."""

    dim: int = 32
    epochs: int = 300
    lr: float = 0.02
    weight_decay: float = 1e-4
    negatives: int = 4  # logistic MF only: unobserved pairs per observed one
    batch_size: int | None = None  # pairs per Adam step; None: by log size (fit_batch_size)
    seed: int = 0


def fit_batch_size(batch_size: int | None, num_interactions: int) -> int | None:
    """Pairs per Adam step: ``batch_size`` when given; for ``None``, the whole log (None, full
    batch) up to ``FULL_BATCH_MAX_INTERACTIONS`` interactions, else ``DEFAULT_MINIBATCH``."""
    if batch_size is not None:
        return batch_size
    return None if num_interactions <= FULL_BATCH_MAX_INTERACTIONS else DEFAULT_MINIBATCH


@dataclass
class TasteModel:
    """The fitted world: every user's predicted rating of every item comes from these."""

    user_vectors: Tensor  # [U, D]
    item_vectors: Tensor  # [N+1, D], row 0 unused
    user_bias: Tensor  # [U]
    item_bias: Tensor  # [N+1]
    global_bias: Tensor  # []
    logistic: bool  # scores are logits (implicit logs): rating = 5 sigmoid(score)
    fit_loss: float | None = None  # the last epoch's mean training loss (for the summary)

    def ratings(self, users: Tensor, items: Tensor | None = None) -> Tensor:
        """Predicted ratings in [0, 5] of ``users`` [B]: for every item [B, N+1], or for
        ``items`` [B] (one each) [B]."""
        if items is None:
            score = (self.user_vectors[users] @ self.item_vectors.T + self.item_bias
                     + self.user_bias[users, None])
        else:
            score = ((self.user_vectors[users] * self.item_vectors[items]).sum(-1)
                     + self.item_bias[items] + self.user_bias[users])
        score = score + self.global_bias
        if self.logistic:
            return MAX_RATING * torch.sigmoid(score)
        return score.clamp(0.0, MAX_RATING)

    def state_dict(self) -> dict[str, Tensor | bool | float | None]:
        return asdict(self)

    def to(self, device: torch.device | str) -> TasteModel:
        """The same model on ``device`` (itself when it is there already): a GPU simulator
        looks its users' tastes up where it steps them."""
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in asdict(self).items()}
        return TasteModel(**moved)


def fit_taste_model(sequences: Sequences, ratings: Tensor | None, config: FitConfig) -> TasteModel:
    """Adam on the whole log, full batch (seconds for MovieLens-100K on a CPU) or in
    minibatches of ``config.batch_size`` pairs (large logs: Amazon Beauty; ``None`` picks by log
    size, ``fit_batch_size``). Logs the loss ``FIT_LOG_LINES`` times: a fit of a large log takes
    minutes, and a user should see it move.

    With ``ratings`` (one per interaction, in ``sequences.items`` order): least squares. Without:
    logistic MF, observed pairs against ``config.negatives`` uniformly drawn items each.
    """
    generator = torch.Generator().manual_seed(config.seed)
    num_users, num_items = sequences.num_users, sequences.num_items
    users = torch.repeat_interleave(torch.arange(num_users), sequences.lengths)
    items = sequences.items
    explicit = ratings is not None
    params = {
        "user_vectors": 0.05 * torch.randn(num_users, config.dim, generator=generator),
        "item_vectors": 0.05 * torch.randn(num_items + 1, config.dim, generator=generator),
        "user_bias": torch.zeros(num_users),
        "item_bias": torch.zeros(num_items + 1),
        "global_bias": torch.tensor(ratings.mean().item() if explicit else 0.0),
    }
    for tensor in params.values():
        tensor.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=config.lr)
    batch_size = fit_batch_size(config.batch_size, sequences.num_interactions)
    log.info("taste model: %s on %s interactions, %d epochs, %s", "least squares" if explicit
             else f"logistic MF (+{config.negatives} sampled negatives each)",
             f"{items.numel():,}", config.epochs,
             "full batch" if batch_size is None else f"minibatches of {batch_size:,} pairs")
    log_every = max(1, config.epochs // FIT_LOG_LINES)
    epoch_loss = torch.zeros(())
    for epoch in range(1, config.epochs + 1):
        if explicit:
            epoch_users, epoch_items, epoch_target = users, items, ratings
        else:  # fresh negatives every epoch
            neg_users = users.repeat(config.negatives)
            neg_items = torch.randint(1, num_items + 1, neg_users.shape, generator=generator)
            epoch_users = torch.cat([users, neg_users])
            epoch_items = torch.cat([items, neg_items])
            epoch_target = torch.cat([torch.ones(users.numel()), torch.zeros(neg_users.numel())])
        num_pairs = epoch_users.numel()
        step_pairs = batch_size or num_pairs
        order = (torch.randperm(num_pairs, generator=generator) if step_pairs < num_pairs
                 else torch.arange(num_pairs))
        epoch_loss = torch.zeros(())
        for start in range(0, num_pairs, step_pairs):
            batch = order[start : start + step_pairs]
            batch_users, batch_items = epoch_users[batch], epoch_items[batch]
            score = ((params["user_vectors"][batch_users] * params["item_vectors"][batch_items])
                     .sum(-1) + params["user_bias"][batch_users] + params["item_bias"][batch_items]
                     + params["global_bias"])
            target = epoch_target[batch]
            loss = (F.mse_loss(score, target) if explicit
                    else F.binary_cross_entropy_with_logits(score, target))
            loss = loss + config.weight_decay * (
                params["user_vectors"].pow(2).sum(-1).mean()
                + params["item_vectors"].pow(2).sum(-1).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.detach() * batch.numel() / num_pairs
        if epoch % log_every == 0 or epoch == config.epochs:
            log.info("taste model: epoch %d/%d, loss %.4f", epoch, config.epochs, epoch_loss.item())
    return TasteModel(**{k: v.detach() for k, v in params.items()}, logistic=not explicit,
                      fit_loss=round(epoch_loss.item(), 6))


class LoggedUsers(UserResponseModel):
    """Real users replayed through a fitted taste model, with boredom and a turn cap."""

    def __init__(
        self,
        num_users: int,
        sequences: Sequences,
        taste: TasteModel,
        *,
        user_pool: Tensor,
        history_length: int,
        logged_watch_time: Tensor,
        click_rating: float = 4.0,
        boredom_window: int = 5,
        boredom_quantile: float = 0.05,
        examination_decay: float = 0.8,
        distinct_users: bool = False,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(num_users, sequences.num_items, device)
        if not 0.0 < examination_decay <= 1.0:
            raise ValueError(f"env.examination_decay must be in (0, 1], got {examination_decay}")
        #: Slates: the user examines slate position j (0 first) with probability decay ** j.
        self.examination_decay = examination_decay
        check_param("boredom_window", boredom_window, 0)
        if not 0.0 <= boredom_quantile < 1.0:
            raise ValueError(f"env.boredom_quantile must be in [0, 1), got {boredom_quantile}")
        if user_pool.numel() == 0:
            raise ValueError("the user split is empty: raise data.validation_user_fraction / "
                             "data.test_user_fraction (or lower both, for training users), or "
                             "use more data")
        if distinct_users and num_users > user_pool.numel():
            raise ValueError(f"{num_users} distinct users asked for, the split has "
                             f"{user_pool.numel()}")
        #: Evaluation: every slot holds its own user of the pool (a seeded sample without
        #: replacement, drawn at the first reset), so no user counts twice.
        self.distinct_users = distinct_users
        self._slots: Tensor | None = None
        # The log and the fitted world live on the CPU (shared by every env of a run); what a
        # step reads is copied to this simulator's device once, here.
        self.taste = taste.to(self.device)
        self.click_rating = click_rating
        self.boredom_window = boredom_window
        self.user_pool = user_pool.to(self.device)
        self.user = torch.zeros(num_users, dtype=torch.long, device=self.device)
        self.recent = torch.zeros(num_users, max(boredom_window, 1), dtype=torch.long,
                                  device=self.device)
        self.boredom_distance = self._distance_quantile(taste, boredom_quantile)
        self._start_history = tuple(
            t.to(self.device) for t in self._first_items(sequences, history_length, logged_watch_time)
        )

    def _distance_quantile(self, taste: TasteModel, quantile: float) -> float:
        """``quantile`` of the distances between 20k random pairs of item vectors (on the CPU:
        the same threshold on every device)."""
        if quantile == 0.0:
            return 0.0
        generator = torch.Generator().manual_seed(0)
        a = torch.randint(1, self.num_items + 1, (20_000,), generator=generator)
        b = torch.randint(1, self.num_items + 1, (20_000,), generator=generator)
        distances = (taste.item_vectors[a] - taste.item_vectors[b]).norm(dim=-1)
        return torch.quantile(distances[a != b], quantile).item()

    @staticmethod
    def _first_items(sequences: Sequences, length: int, watch: Tensor) -> tuple[Tensor, Tensor]:
        """Each user's first ``length`` items and their logged watch time, right-aligned, [U, L]."""
        first = sequences.offsets[:-1]  # [U]
        source, valid = window_positions(first, first + sequences.lengths.clamp(max=length), length)
        items = torch.where(valid, sequences.items[source], 0)
        times = torch.where(valid, watch[source], 0.0)
        return items, times

    def item_vectors(self) -> Tensor:
        """The taste model's item factors, [N+1, D] with a zero padding row: the space in which
        these users' boredom rule measures sameness, so intra-list diversity measures in it
        too. No categories (`item_categories` stays None): MovieLens items have several genres
        each, and other logs none."""
        vectors = self.taste.item_vectors.clone()
        vectors[0] = 0.0  # never fitted on an interaction: only weight decay moved it
        return vectors

    def start_history(self, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The history the reset users start with: their real first items, clicked."""
        items, watch = self._start_history
        items, watch = items[self.user], watch[self.user]
        response = torch.where(items != 0, CLICKED, PADDING)
        return items, response, watch

    def reset(self, mask: Tensor, generator: torch.Generator) -> None:
        if self.distinct_users:
            if self._slots is None:
                order = torch.randperm(self.user_pool.numel(), generator=generator,
                                       device=self.device)
                self._slots = self.user_pool[order[: self.num_users]]
            drawn = self._slots  # a slot reset again replays its own user
        else:  # training: users drawn with replacement, as many sessions as training needs
            drawn = self.user_pool[torch.randint(0, self.user_pool.numel(), (self.num_users,),
                                                 generator=generator, device=self.device)]
        self.user = torch.where(mask, drawn, self.user)
        self.recent = self.recent.where(~mask[:, None], 0)

    def respond(self, action: Tensor, generator: torch.Generator) -> UserResponse:
        rating = self.taste.ratings(self.user, action)
        click = rating >= self.click_rating
        bored = self._bored(action, update=torch.ones_like(click))
        return UserResponse(click=click, watch_time=rating, done=bored)

    def respond_slate(self, slate: Tensor, generator: torch.Generator) -> SlateResponse:
        """The cascade model (Craswell et al. 2008) with position-based examination: the user
        reads the slate top-down and stops at the first examined item they like (predicted
        rating >= ``click_rating``), which they click: at most one click. Position ``j`` (0 first)
        is examined with probability ``examination_decay ** j``: one uniform draw per user, so
        the examined positions are a prefix. The reward is the clicked item's predicted rating,
        0 without a click; only a clicked item counts for boredom (it is the one watched)."""
        num_users, k = slate.shape
        rating = self.taste.ratings(self.user[:, None].expand(-1, k), slate)  # [B, k]
        depth = torch.rand(num_users, generator=generator, device=self.device)  # [B]
        examination = self.examination_decay ** torch.arange(k, device=self.device)  # [k]
        hit = (rating >= self.click_rating) & (depth[:, None] < examination)  # [B, k]
        click = hit.any(dim=1)
        position = torch.where(click, hit.long().argmax(dim=1), -1)  # [B]
        index = position.clamp(min=0)[:, None]
        watch = torch.where(click, rating.gather(1, index).squeeze(1), 0.0)
        bored = self._bored(slate.gather(1, index).squeeze(1), update=click)
        return SlateResponse(position=position, watch_time=watch, done=bored & click)

    def _bored(self, item: Tensor, update: Tensor) -> Tensor:
        """Whether ``item`` [B] is too close to one of the user's recent items; the recent
        window takes ``item`` where ``update`` [B] is True."""
        if self.boredom_window == 0:
            return torch.zeros_like(update)
        shown = self.taste.item_vectors[item][:, None, :]  # [B, 1, D]
        recent = self.taste.item_vectors[self.recent]  # [B, W, D]
        close = (recent - shown).norm(dim=-1) < self.boredom_distance  # [B, W]
        bored = (close & (self.recent != 0)).any(dim=1)
        shifted = torch.cat([self.recent[:, 1:], item[:, None]], dim=1)
        self.recent = torch.where(update[:, None], shifted, self.recent)
        return bored

    def expected_watch_time(self) -> Tensor:
        return self.taste.ratings(self.user)

    def state_dict(self) -> dict[str, Tensor]:
        """Hidden per-user state: who each simulated user is and what they saw last (the log and
        the fitted taste model are rebuilt from the config)."""
        return {"user": self.user, "recent": self.recent}


@dataclass(frozen=True)
class LoggedWorld:
    """What every env of one configuration shares: the sequences and the fitted taste model."""

    sequences: Sequences
    taste: TasteModel


_WORLDS: dict[str, LoggedWorld] = {}


def click_statistics(taste: TasteModel, num_users: int, num_items: int,
                     click_rating: float) -> tuple[float, float]:
    """``(share of clicks, mean predicted rating)`` over ``CLICK_SAMPLE_PAIRS`` uniformly drawn
    (user, item) pairs: what a random recommendation gets. Seeded apart from the global RNG, so
    measuring it changes nothing else."""
    generator = torch.Generator().manual_seed(0)
    users = torch.randint(0, num_users, (CLICK_SAMPLE_PAIRS,), generator=generator)
    items = torch.randint(1, num_items + 1, (CLICK_SAMPLE_PAIRS,), generator=generator)
    ratings = taste.ratings(users, items)
    return (ratings >= click_rating).float().mean().item(), ratings.mean().item()


def taste_summary(taste: TasteModel, sequences: Sequences, fit: FitConfig,
                  click_rating: float) -> tuple[dict[str, object], list[str]]:
    """How the world was fitted and what a random recommendation gets in it (the summary's
    ``taste_model``), and a warning when it looks degenerate (``DEGENERATE_CLICK_SHARE``)."""
    share, mean = click_statistics(taste, sequences.num_users, sequences.num_items, click_rating)
    summary = {
        "objective": "logistic MF" if taste.logistic else "least squares",
        "epochs": fit.epochs,
        "batch_size": fit_batch_size(fit.batch_size, sequences.num_interactions),  # None: full
        "final_loss": taste.fit_loss,
        "click_rating": click_rating,
        "click_share": round(share, 4),
        "mean_rating": round(mean, 4),
    }
    low, high = DEGENERATE_CLICK_SHARE
    warnings = []
    if share < low:
        warnings.append(
            f"the fitted world looks degenerate: only {share:.2%} of random (user, item) pairs "
            f"reach env.click_rating={click_rating:g} (mean predicted rating {mean:.2f}): check "
            "the ratings (data.rating_scale, data.min_rating) or lower env.click_rating")
    elif share > high:
        warnings.append(
            f"the fitted world looks degenerate: {share:.1%} of random (user, item) pairs reach "
            f"env.click_rating={click_rating:g}, so a click says little: raise env.click_rating "
            "or check the ratings (data.rating_scale)")
    summary["degenerate"] = bool(warnings)
    return summary, warnings


def log_taste_summary(summary: dict[str, object], warnings: list[str]) -> None:
    batch = summary["batch_size"]
    loss = summary["final_loss"]
    log.info("taste model: %s, %d epochs, %s, final loss %s; a random recommendation is a click "
             "(rating >= %g) %.1f%% of the time, mean predicted rating %.2f",
             summary["objective"], summary["epochs"],
             "full batch" if batch is None else f"minibatches of {batch:,}",
             "?" if loss is None else f"{loss:.4f}", summary["click_rating"],
             100 * summary["click_share"],
             summary["mean_rating"])
    for warning in warnings:
        log.warning(warning)


def load_world(path: str, format: str, preprocess: PreprocessConfig, fit: FitConfig,
               cache_dir: str | None, read_options: dict[str, object],
               click_rating: float = 4.0) -> LoggedWorld:
    """Reads, preprocesses and fits once per process (memoised), and once per machine (cached).

    The taste model's cache key holds everything that changes the fitted world: the files
    (names, sizes, modification times), the format and how it is read, the preprocessing and
    the fit. ``click_rating`` only enters the summary (``Sequences.summary["taste_model"]``).
    """
    source = resolve_source(path, format)
    exists = source.exists()
    options = normalise_options(source, format, read_options) if exists else read_options
    key = json.dumps([str(source.resolve()), source_fingerprint(source) if exists else {}, format,
                      asdict(preprocess), asdict(fit), options], sort_keys=True, default=str)
    memo_key = json.dumps([key, cache_dir, click_rating])
    if memo_key in _WORLDS:
        return _WORLDS[memo_key]
    sequences = load_sequences(path, format, preprocess, cache_dir=cache_dir, **read_options)
    taste = None
    cache_file = None
    if cache_dir is not None:
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        cache_file = Path(cache_dir) / f"{source.name}-taste-{digest}.pt"
        if cache_file.is_file():
            taste = TasteModel(**torch.load(cache_file, weights_only=True))
            log.info("taste model: read from the cache, %s", cache_file)
    if taste is None:
        taste = fit_taste_model(sequences, sequences.ratings, fit)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            torch.save(taste.state_dict(), tmp)
            os.replace(tmp, cache_file)
    summary, warnings = taste_summary(taste, sequences, fit, click_rating)
    log_taste_summary(summary, warnings)
    sequences.summary = {**(sequences.summary or {}), "taste_model": summary}
    sequences.summary["warnings"] = [*sequences.summary.get("warnings", []), *warnings]
    world = LoggedWorld(sequences, taste)
    _WORLDS[memo_key] = world
    return world


#: Which users an env draws: the training users (with replacement, session after session), or
#: the validation or test users (evaluation: each at most once).
USER_SPLITS = ("train", "validation", "test")


class LoggedEnv(RecEnv):
    """`RecEnv` over real users of a log, answered by a fitted taste model (module docstring).

    ``batch_size = [num_users]``; each reset draws users of ``user_split`` with the env's
    generator: training users with replacement; validation and test users without (a seeded
    sample of ``num_users`` of them, or all of them when the split has no more: the batch is
    then the split's size), so an evaluation meets each user once and its interval is over
    distinct users. A logged user's episode under a greedy policy is deterministic (start
    history, taste model and boredom rule are), so one episode per user is the whole answer. The data is read, preprocessed and fitted once per process and cached on disk.
    ``data`` is the log and its preprocessing (`DataConfig`: the ``data`` config node, whole);
    the other arguments are the simulator's (``conf/env/logged.yaml``).
    """

    users: LoggedUsers

    def __init__(
        self,
        num_users: int,
        *,
        data: DataConfig | Mapping,
        seed: int | None = None,
        device: torch.device | str = "cpu",
        user_split: str = "train",
        fit_dim: int = 32,
        fit_epochs: int = 300,
        fit_batch_size: int | None = None,
        history_length: int = 10,
        click_rating: float = 4.0,
        boredom_window: int = 5,
        boredom_quantile: float = 0.05,
        max_episode_steps: int = 30,
        mask_history: bool = True,
        mask_scope: str = "episode",
        slate_size: int = 1,
        examination_decay: float = 0.8,
    ) -> None:
        if user_split not in USER_SPLITS:
            raise ValueError(f"user_split must be one of {USER_SPLITS}, got {user_split!r}")
        data = DataConfig.from_mapping(data)
        world = load_world(
            data.path, data.format, data.preprocess,
            FitConfig(dim=fit_dim, epochs=fit_epochs, batch_size=fit_batch_size),
            data.cache_dir, data.read_options, click_rating,
        )
        sequences = world.sequences
        pool = sequences.users_of(user_split)
        evaluation = user_split != "train"
        if evaluation:
            num_users = min(num_users, pool.numel())
        watch = (sequences.ratings if sequences.ratings is not None
                 else torch.full((sequences.num_interactions,), MAX_RATING))
        users = LoggedUsers(
            num_users, sequences, world.taste, user_pool=pool, history_length=history_length,
            logged_watch_time=watch, click_rating=click_rating, boredom_window=boredom_window,
            boredom_quantile=boredom_quantile, examination_decay=examination_decay,
            distinct_users=evaluation, device=device,
        )
        super().__init__(users, history_length=history_length, mask_history=mask_history,
                         mask_scope=mask_scope, max_episode_steps=max_episode_steps,
                         slate_size=slate_size, seed=seed)
        #: The preprocessed log (users, their item sequences, the split), for analysis and tests.
        self.sequences = sequences
        #: Each item's text ("title | genres", [N+1], "" at padding), or None when the log's format
        #: has no item metadata: the input of the encoder's item-text embeddings
        #: (``encoder=bert_text``, recrl/encoders/text.py). Public, as a catalogue is.
        self.item_texts: list[str] | None = sequences.item_texts

    @property
    def logged_popularity(self) -> Tensor:
        """Interactions of each item by the log's training users, [N+1] float32 (0 at padding):
        the popularity novelty and the majority categories are measured against
        (`recrl.evaluation.popularity_reference`), the ``popular_log`` baseline's counts."""
        return log_popularity(self.sequences, users=~self.sequences.heldout_users)
