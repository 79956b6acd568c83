"""From a raw log to per-user chronological item sequences, re-indexed and split.

Steps, each a field of ``PreprocessConfig``, each counted in the data summary
(``Sequences.summary``, ``recrl.data.summary``):

0. ratings and duplicates, so that a log never changes meaning silently: blank ratings are
   dropped or refused (``blank_ratings``; a log whose rating column is entirely blank has no
   ratings); ratings outside the simulator's 0-5 scale are refused unless ``rating_scale`` maps
   them linearly onto it; rows with the same user, item and time keep the last or are refused
   (``duplicates``);
1. implicit feedback: keep interactions with ``rating >= min_rating`` (in the log's own units,
   before ``rating_scale``; formats without ratings keep everything);
2. k-core: repeatedly drop users with fewer than ``min_user_interactions`` and items with fewer
   than ``min_item_interactions`` until both hold (the usual 5-core of BERT4Rec/SASRec);
3. chronological order within each user (ties keep file order);
4. re-indexing: items become ``1..N`` (0 stays padding), users ``0..U-1``, both in order of first
   appearance in the sorted log, so the mapping is deterministic; the raw ids stay on
   ``Sequences`` (``user_ids``, ``item_ids``) so that outputs can be mapped back;
5. splits: leave-one-out (each user's last item is test, the one before validation, the rest
   training) and a three-way user-level split (training, validation and test users, from one
   seeded permutation, for simulators that must be evaluated on unseen users).

Item metadata, where the format has it (MovieLens titles and genres), follows the re-indexing as
one text per item (``Sequences.item_texts``), the input of the encoder's item-text embeddings.

Everything is vectorised pandas/torch; sequences are stored as CSR (``items`` flat in user-major
chronological order plus ``offsets``), which holds Amazon Beauty's 54k items and 40k users in a
few MB.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from recrl.data.formats import RawLog, normalise_options, read_log, resolve_source
from recrl.data.summary import count_step, log, log_summary, split_sizes
from recrl.observation import MAX_RATING

#: ``data.blank_ratings``: what rows with a blank rating get, in a log that has ratings.
BLANK_RATING_RULES = ("drop", "refuse")
#: ``data.duplicates``: what rows with the same user, item and time get.
DUPLICATE_RULES = ("keep_last", "refuse")


def _scale_pair(scale: Sequence[float] | None) -> tuple[float, float] | None:
    """``data.rating_scale`` as ``(min, max)`` floats, or None; anything else is refused."""
    if scale is None:
        return None
    try:
        low, high = (float(v) for v in scale)
    except (TypeError, ValueError):
        raise ValueError(f"data.rating_scale must be [min, max], got {scale!r}") from None
    if not low < high:
        raise ValueError(f"data.rating_scale=[{low:g}, {high:g}] needs min < max")
    return low, high


def _check_choice(setting: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"data.{setting}={value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class PreprocessConfig:
    """How a raw log becomes sequences; the cache key includes every field."""

    min_rating: float | None = None
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    validation_user_fraction: float = 0.05
    test_user_fraction: float = 0.05
    split_seed: int = 0
    blank_ratings: str = "drop"
    rating_scale: tuple[float, float] | None = None  # [min, max] of the log, mapped onto 0-5
    duplicates: str = "keep_last"

    def __post_init__(self) -> None:
        # A list from the config becomes a tuple: the config is frozen, hashable and cache-keyed.
        object.__setattr__(self, "rating_scale", _scale_pair(self.rating_scale))
        _check_choice("blank_ratings", self.blank_ratings, BLANK_RATING_RULES)
        _check_choice("duplicates", self.duplicates, DUPLICATE_RULES)
        if self.min_user_interactions < 3:
            raise ValueError(
                "data.min_user_interactions must be >= 3: leave-one-out needs a training item, a "
                f"validation item and a test item per user (got {self.min_user_interactions})"
            )
        if self.min_item_interactions < 1:
            raise ValueError(
                f"data.min_item_interactions must be >= 1, got {self.min_item_interactions}"
            )
        for name in ("validation_user_fraction", "test_user_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.validation_user_fraction + self.test_user_fraction >= 1.0:
            raise ValueError(
                "data.validation_user_fraction + data.test_user_fraction must leave users to "
                f"train on (< 1), got {self.validation_user_fraction} + {self.test_user_fraction}"
            )


@dataclass(frozen=True)
class DataConfig:
    """An interaction log and its preprocessing: ``conf/data/*.yaml`` field by field (each field
    is documented there). A logged-data simulator takes it whole, so the run records exactly the
    ``data.*`` it read."""

    path: str
    format: str
    columns: Mapping[str, str | None] | None = None  # format=table only
    min_rating: float | None = None
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    validation_user_fraction: float = 0.05
    test_user_fraction: float = 0.05
    split_seed: int = 0
    cache_dir: str | None = None
    sep: str | None = None  # format=table only
    header: bool = True  # format=table only
    blank_ratings: str = "drop"
    rating_scale: Sequence[float] | None = None
    duplicates: str = "keep_last"

    def __post_init__(self) -> None:
        if not isinstance(self.header, bool):
            raise ValueError(f"data.header must be true or false, got {self.header!r}")

    @classmethod
    def from_mapping(cls, data: Mapping) -> DataConfig:
        """From the ``data`` config node (or any mapping); an unknown key is refused by name."""
        if isinstance(data, cls):
            return data
        known = [field.name for field in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"data.{unknown[0]} is not a data setting; the data group's settings "
                             f"are {', '.join(known)} (conf/data/logged.yaml)")
        return cls(**{key: data[key] for key in known if key in data})

    @property
    def preprocess(self) -> PreprocessConfig:
        """The preprocessing part of the settings: every `PreprocessConfig` field, by name."""
        return PreprocessConfig(**{field.name: getattr(self, field.name)
                                   for field in fields(PreprocessConfig)})

    @property
    def read_options(self) -> dict[str, Any]:
        """How a table is read (columns, separator, header); other formats take no options."""
        if self.format != "table":
            return {}
        return {"columns": dict(self.columns or {}), "sep": self.sep, "header": self.header}


@dataclass
class Sequences:
    """Per-user chronological item sequences (CSR) and their splits."""

    items: Tensor  # [I] long, item ids 1..N, user-major, chronological
    offsets: Tensor  # [U+1] long; user u's items are items[offsets[u]:offsets[u+1]]
    num_items: int
    item_raw_ids: Tensor  # [N+1] long, raw id of each new id (index 0: padding, -1)
    user_raw_ids: Tensor  # [U] long
    heldout_users: Tensor  # [U] bool, users never trained on: the validation and test users
    ratings: Tensor | None = None  # [I] float32 aligned with ``items``; None if the log has none
    # [N+1] item text ("title | genres"; "" at padding and for items without metadata), or None
    # for formats without item metadata. Input of recrl.encoders.text.embed_item_texts.
    item_texts: list[str] | None = None
    # [U] bool, the held-out users that validation meets (weights, hyper-parameters); the other
    # held-out users are the test users. None: no validation users (sequences built by hand).
    validation_users: Tensor | None = None
    # Logs whose ids are text: the raw ids by internal index ([U]; items [N+1], "" at padding),
    # and user_raw_ids / item_raw_ids hold -1. None where the ids are integers. Read them
    # through ``user_ids`` / ``item_ids``, which work for both.
    user_text_ids: list[str] | None = None
    item_text_ids: list[str] | None = None
    # What was read, kept and decided on the way (recrl/data/summary.py): plain, JSON-ready.
    summary: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.validation_users is None:
            self.validation_users = torch.zeros_like(self.heldout_users)
        if (self.validation_users & ~self.heldout_users).any():
            raise ValueError("validation users must be held-out users")

    @property
    def test_users(self) -> Tensor:
        """``[U]`` bool: the held-out users only the final evaluation meets."""
        return self.heldout_users & ~self.validation_users

    def users_of(self, split: str) -> Tensor:
        """The users (indices, ascending) of ``split``: "train", "validation" or "test"."""
        masks = {"train": ~self.heldout_users, "validation": self.validation_users,
                 "test": self.test_users}
        if split not in masks:
            raise ValueError(f"user split must be one of {tuple(masks)}, got {split!r}")
        return torch.nonzero(masks[split]).squeeze(1)

    @property
    def num_users(self) -> int:
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def num_interactions(self) -> int:
        return self.items.numel()

    @property
    def user_ids(self) -> np.ndarray:
        """``[U]``: each user's raw id as the log has it (int64, or object array of text)."""
        if self.user_text_ids is not None:
            return np.array(self.user_text_ids, dtype=object)
        return self.user_raw_ids.numpy()

    @property
    def item_ids(self) -> np.ndarray:
        """``[N+1]``: each item's raw id as the log has it (int64, or object array of text);
        index 0 is padding (-1, or None for text ids)."""
        if self.item_text_ids is not None:
            ids = np.array(self.item_text_ids, dtype=object)
            ids[0] = None
            return ids
        return self.item_raw_ids.numpy()

    def user_sequence(self, user: int) -> Tensor:
        return self.items[self.offsets[user] : self.offsets[user + 1]]

    def leave_one_out(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(train_items, train_offsets, valid_item, test_item)``: per user, the last item is the
        test target, the one before it the validation target, the rest the training sequence."""
        last = self.offsets[1:] - 1
        train_items, train_offsets = self.training_sequences()
        return train_items, train_offsets, self.items[last - 1], self.items[last]

    def training_sequences(self, held_out: int = 2) -> tuple[Tensor, Tensor]:
        """``(items, offsets)`` of every user's sequence without its last ``held_out`` items
        (2: the leave-one-out training part; 1: the validation item kept as well)."""
        lengths = self.lengths - held_out
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
        return self.items[self.training_part(held_out)], offsets

    def training_part(self, held_out: int = 2) -> Tensor:
        """``[I]`` bool: the interactions of each user's leave-one-out training sequence (all
        but the last ``held_out``: 2 keeps the validation and test items out, 1 the test item
        only), for arrays aligned with ``items`` such as ``ratings``."""
        lengths = self.lengths
        position = torch.arange(self.items.numel()) - torch.repeat_interleave(
            self.offsets[:-1], lengths
        )
        return position < torch.repeat_interleave(lengths - held_out, lengths)

    def state_dict(self) -> dict[str, Any]:
        return {"items": self.items, "offsets": self.offsets, "num_items": self.num_items,
                "item_raw_ids": self.item_raw_ids, "user_raw_ids": self.user_raw_ids,
                "heldout_users": self.heldout_users, "ratings": self.ratings,
                "item_texts": self.item_texts, "validation_users": self.validation_users,
                "user_text_ids": self.user_text_ids, "item_text_ids": self.item_text_ids,
                "summary": self.summary}


def window_positions(start: Tensor, end: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The flat positions ``[B, L]`` of the (at most) ``length`` items right before ``end``
    (exclusive) and not before ``start``, right-aligned as the encoders read a history, and
    where they are valid (False: left padding). One gather cuts every window of a batch.

    ``start``/``end`` are ``[B]`` positions in a CSR item array (a user's first item, a target).
    """
    source = end[:, None] - length + torch.arange(length, device=end.device)[None, :]  # [B, L]
    valid = source >= start[:, None]
    return source.clamp(min=0), valid


def blank_ratings(frame: pd.DataFrame, rule: str, name: str) -> tuple[pd.DataFrame, int]:
    """Drops (``rule="drop"``) or refuses the rows whose rating is blank in a log that has
    ratings; returns the rows kept and how many were blank. Dropping, not imputing: the taste
    model fits ratings, and an invented rating would be an invented taste; a few rows lost
    cost the fit nothing, while treating the whole log as unrated would discard every rating."""
    blank = frame["rating"].isna()
    count = int(blank.sum())
    if count and rule == "refuse":
        row = int(frame.loc[blank, "order"].iloc[0])
        raise ValueError(
            f"{name}: {count:,} blank rating(s), the first on data row {row + 1}: fill them in, "
            "or set data.blank_ratings=drop to drop those rows"
        )
    return (frame[~blank] if count else frame), count


def check_rating_range(frame: pd.DataFrame, scale: tuple[float, float] | None, name: str,
                       can_ignore: bool) -> tuple[float, float]:
    """The ratings' ``(min, max)``, once they are known to fit the simulator's 0-5 scale, or
    ``scale`` (``data.rating_scale``) when one is given; anything else is refused, naming the
    setting that maps them (``can_ignore``: ``format=table``, where ratings can be left out)."""
    low, high = float(frame["rating"].min()), float(frame["rating"].max())
    if scale is not None:
        if low < scale[0] or high > scale[1]:
            raise ValueError(
                f"{name}: ratings range from {low:g} to {high:g}, outside data.rating_scale="
                f"[{scale[0]:g}, {scale[1]:g}]: set data.rating_scale to the log's scale"
            )
        return low, high
    if low < 0.0 or high > MAX_RATING:
        what = "negative ratings" if low < 0.0 else f"ratings above {MAX_RATING:g}"
        ignore = " (or data.columns.rating=null to use none)" if can_ignore else ""
        raise ValueError(
            f"{name}: {what} (they range from {low:g} to {high:g}; the simulator's scale is "
            f"0-{MAX_RATING:g}): set data.rating_scale=[min, max] to map them linearly onto "
            f"0-{MAX_RATING:g}{ignore}"
        )
    return low, high


def _shown(value: Any) -> str:
    """An id or time as a message shows it: text quoted, numbers plain."""
    return repr(value) if isinstance(value, str) else str(value)


def duplicate_rows(frame: pd.DataFrame, rule: str, name: str) -> tuple[pd.DataFrame, int]:
    """Keeps the last of rows with the same user, item and time (``rule="keep_last"``: a
    re-logged or corrected event) or refuses them; returns the rows kept and how many went."""
    repeated = frame.duplicated(["user", "item", "timestamp"], keep="last")
    count = int(repeated.sum())
    if count and rule == "refuse":
        user, item, row = (frame.loc[repeated, c].iloc[0] for c in ("user", "item", "order"))
        raise ValueError(
            f"{name}: {count:,} duplicate row(s) (same user, item and time; e.g. user "
            f"{_shown(user)}, item {_shown(item)} on data row {row + 1}, again later): set "
            "data.duplicates=keep_last to keep the last of each"
        )
    return (frame[~repeated] if count else frame), count


def implicit_feedback(frame: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    if min_rating is None or frame["rating"].isna().all():
        return frame
    return frame[frame["rating"] >= min_rating]


def to_simulator_scale(ratings: pd.Series, scale: tuple[float, float] | None) -> pd.Series:
    """``data.rating_scale=[min, max]`` mapped linearly onto the simulator's ``0..MAX_RATING``."""
    if scale is None:
        return ratings
    return (ratings - scale[0]) / (scale[1] - scale[0]) * MAX_RATING


def k_core(frame: pd.DataFrame, min_user: int, min_item: int) -> pd.DataFrame:
    """Drops sparse users and items until every user and item has enough interactions."""
    while True:
        user_counts = frame["user"].map(frame["user"].value_counts())
        item_counts = frame["item"].map(frame["item"].value_counts())
        keep = (user_counts >= min_user) & (item_counts >= min_item)
        if keep.all():
            return frame
        frame = frame[keep]


def item_texts_from(items: pd.DataFrame | None, item_raw: pd.Index) -> list[str] | None:
    """``"title | genres"`` of every new item id (``item_raw[i - 1]`` is item i's raw id), with
    ``""`` at padding 0 and for items the metadata lacks; None without metadata."""
    if items is None:
        return None
    meta = items.drop_duplicates("item").set_index("item")
    title = meta["title"].fillna("").astype(str).str.strip()
    # MovieLens-latest writes "(no genres listed)": no information, so no text for it.
    genres = (meta["genres"].fillna("").astype(str).str.strip()
              .replace("(no genres listed)", ""))
    text = (title + " | " + genres).where(genres != "", title).where(title != "", genres)
    return ["", *text.reindex(item_raw).fillna("").tolist()]


def id_maps(raw: pd.Index, padding: bool) -> tuple[Tensor, list[str] | None]:
    """The raw ids of a factorised id column, by new index: integer ids as a long tensor (and
    None), text ids as -1s and their texts (``padding``: items, whose index 0 is padding)."""
    if pd.api.types.is_integer_dtype(raw):
        ids = torch.tensor(raw.to_numpy(), dtype=torch.long)
        return (torch.cat([torch.tensor([-1]), ids]) if padding else ids), None
    text = [str(v) for v in raw]
    size = len(text) + int(padding)
    return torch.full((size,), -1, dtype=torch.long), ([""] if padding else []) + text


def clean(log: RawLog, config: PreprocessConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Step 0 and 1-2 of the module docstring; returns the kept rows (with their file
    ``order``) and the summary of what was read, kept and decided."""
    frame = log.interactions.reset_index(drop=True)
    frame = frame.assign(order=range(len(frame)))
    steps = [count_step("read", frame)]
    warnings: list[str] = []
    rated = bool(frame["rating"].notna().any())  # an all-blank rating column: no ratings
    blank, value_range = 0, None
    if rated:
        frame, blank = blank_ratings(frame, config.blank_ratings, log.source or log.name)
        value_range = check_rating_range(frame, config.rating_scale, log.source or log.name,
                                         can_ignore="columns" in log.details)
        if blank:
            warnings.append(f"{blank:,} row(s) with a blank rating dropped "
                            "(data.blank_ratings=drop)")
    elif config.rating_scale is not None:
        warnings.append("data.rating_scale ignored: the log has no ratings")
    steps.append(count_step("blank_ratings", frame))
    frame, repeated = duplicate_rows(frame, config.duplicates, log.source or log.name)
    if repeated:
        warnings.append(f"{repeated:,} duplicate row(s) (same user, item, time) dropped, the "
                        "last of each kept (data.duplicates=keep_last)")
    steps.append(count_step("duplicates", frame))
    frame = implicit_feedback(frame, config.min_rating)
    if config.min_rating is not None and not rated:
        warnings.append(f"data.min_rating={config.min_rating:g} ignored: the log has no ratings")
    steps.append(count_step("min_rating", frame))
    frame = k_core(frame, config.min_user_interactions, config.min_item_interactions)
    steps.append(count_step("k_core", frame))
    summary = {
        "read": dict(log.details),
        "ratings": {"used": rated, "column": log.details.get("rating_column"),
                    "range": list(value_range) if value_range else None,
                    "rating_scale": list(config.rating_scale) if rated and config.rating_scale
                    else None,
                    "blank": blank, "blank_rule": config.blank_ratings,
                    "min_rating": config.min_rating,
                    "min_rating_applied": rated and config.min_rating is not None},
        "duplicates": {"found": repeated, "rule": config.duplicates},
        "steps": steps,
        "warnings": warnings,
    }
    return frame, summary


def preprocess(log: RawLog, config: PreprocessConfig) -> Sequences:
    """Runs steps 0-5 of the module docstring on ``log``; ``Sequences.summary`` says what each
    step kept."""
    frame, summary = clean(log, config)
    if frame.empty:
        raise ValueError(
            f"{log.source or log.name}: no interactions left after filtering "
            f"(min_rating={config.min_rating}, "
            f"{config.min_user_interactions}-core users, {config.min_item_interactions}-core "
            "items); lower the thresholds"
        )
    frame = frame.sort_values(["user", "timestamp", "order"], kind="stable")
    user_codes, user_raw = pd.factorize(frame["user"])
    item_codes, item_raw = pd.factorize(frame["item"])
    lengths = torch.bincount(torch.as_tensor(user_codes), minlength=len(user_raw))
    # One seeded permutation of the users: its first test users, then its validation users, are
    # held out (at 0.05 + 0.05 these are exactly the users a single 10% hold-out took before).
    generator = torch.Generator().manual_seed(config.split_seed)
    order = torch.randperm(len(user_raw), generator=generator)
    num_test = int(round(config.test_user_fraction * len(user_raw)))
    num_validation = int(round(config.validation_user_fraction * len(user_raw)))
    heldout = torch.zeros(len(user_raw), dtype=torch.bool)
    heldout[order[: num_test + num_validation]] = True
    validation = torch.zeros(len(user_raw), dtype=torch.bool)
    validation[order[num_test : num_test + num_validation]] = True
    user_raw_ids, user_text_ids = id_maps(user_raw, padding=False)
    item_raw_ids, item_text_ids = id_maps(item_raw, padding=True)
    ratings = to_simulator_scale(frame["rating"], config.rating_scale)
    sequences = Sequences(
        items=torch.as_tensor(item_codes, dtype=torch.long) + 1,
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        num_items=len(item_raw),
        item_raw_ids=item_raw_ids,
        user_raw_ids=user_raw_ids,
        heldout_users=heldout,
        validation_users=validation,
        ratings=None if ratings.isna().any()
        else torch.tensor(ratings.to_numpy(), dtype=torch.float32),
        item_texts=item_texts_from(log.items, item_raw),
        user_text_ids=user_text_ids,
        item_text_ids=item_text_ids,
    )
    sequences.summary = {**summary, "split": split_sizes(sequences)}
    return sequences


def source_fingerprint(path: Path) -> dict[str, int | str]:
    """Identifies the data on disk cheaply: every file's name, size and modification time."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path) if path.is_dir() else p.name):
            f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files}


def cache_key(path: Path, format: str, config: PreprocessConfig, options: dict) -> str:
    """Every input that changes the sequences: the files, the format, the preprocessing and the
    read options (a table's columns, separator, header)."""
    payload = {"source": source_fingerprint(path), "format": format, "config": asdict(config),
               "columns": options, "version": 4}  # 3: item_texts; 4: text ids, summary
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_sequences(path: Path | str, format: str, config: PreprocessConfig,
                   cache_dir: Path | str | None = None, **options: Any) -> Sequences:
    """Reads and preprocesses a log, through an on-disk cache keyed by data and config, and
    logs its summary (``recrl.data``). ``options``: ``format=table``'s ``columns``, ``sep`` and
    ``header`` (``DataConfig.read_options``).

    The cache file is written atomically and read with ``torch.load(weights_only=True)``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist; download it first "
            "(python -m recrl.data download ml-100k) or point data.path at it"
        )
    source = resolve_source(path, format)
    options = normalise_options(source, format, options)
    cache_file = None
    sequences = None
    if cache_dir is not None:
        key = cache_key(source, format, config, options)
        cache_file = Path(cache_dir) / f"{source.name}-{key}.pt"
        if cache_file.is_file():
            sequences = Sequences(**torch.load(cache_file, weights_only=True))
            log.info("data: preprocessed log read from the cache, %s", cache_file)
    if sequences is None:
        sequences = preprocess(read_log(format, source, **options), config)
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            torch.save(sequences.state_dict(), tmp)
            os.replace(tmp, cache_file)
    # Where the log is, not part of the cached content (the same data may move).
    sequences.summary = {"path": str(source), "format": format, **(sequences.summary or {})}
    log_summary(sequences.summary)
    return sequences
