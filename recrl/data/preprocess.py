"""From a raw log to per-user chronological item sequences, re-indexed and split.

Steps, each a field of ``PreprocessConfig``:

1. implicit feedback: keep interactions with ``rating >= min_rating`` (formats without ratings
   keep everything);
2. k-core: repeatedly drop users with fewer than ``min_user_interactions`` and items with fewer
   than ``min_item_interactions`` until both hold (the usual 5-core of BERT4Rec/SASRec);
3. chronological order within each user (ties keep file order);
4. re-indexing: items become ``1..N`` (0 stays padding), users ``0..U-1``, both in order of first
   appearance in the sorted log, so the mapping is deterministic;
5. splits: leave-one-out (each user's last item is test, the one before validation, the rest
   training) and a user-level split (a seeded share of users held out entirely, for simulators
   that must be evaluated on unseen users).

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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from recrl.data.formats import RawLog, read_log


@dataclass(frozen=True)
class PreprocessConfig:
    """How a raw log becomes sequences; the cache key includes every field."""

    min_rating: float | None = None
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    validation_user_fraction: float = 0.05
    test_user_fraction: float = 0.05
    split_seed: int = 0

    def __post_init__(self) -> None:
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
        return PreprocessConfig(
            min_rating=self.min_rating, min_user_interactions=self.min_user_interactions,
            min_item_interactions=self.min_item_interactions,
            validation_user_fraction=self.validation_user_fraction,
            test_user_fraction=self.test_user_fraction, split_seed=self.split_seed)

    @property
    def table_columns(self) -> dict[str, str | None]:
        """The column names a table reader uses; other formats name no columns."""
        return dict(self.columns or {}) if self.format == "table" else {}


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

    def state_dict(self) -> dict[str, Tensor | int | list[str] | None]:
        return {"items": self.items, "offsets": self.offsets, "num_items": self.num_items,
                "item_raw_ids": self.item_raw_ids, "user_raw_ids": self.user_raw_ids,
                "heldout_users": self.heldout_users, "ratings": self.ratings,
                "item_texts": self.item_texts, "validation_users": self.validation_users}


def window_positions(start: Tensor, end: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """The flat positions ``[B, L]`` of the (at most) ``length`` items right before ``end``
    (exclusive) and not before ``start``, right-aligned as the encoders read a history, and
    where they are valid (False: left padding). One gather cuts every window of a batch.

    ``start``/``end`` are ``[B]`` positions in a CSR item array (a user's first item, a target).
    """
    source = end[:, None] - length + torch.arange(length, device=end.device)[None, :]  # [B, L]
    valid = source >= start[:, None]
    return source.clamp(min=0), valid


def implicit_feedback(frame: pd.DataFrame, min_rating: float | None) -> pd.DataFrame:
    if min_rating is None or frame["rating"].isna().all():
        return frame
    return frame[frame["rating"] >= min_rating]


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


def preprocess(log: RawLog, config: PreprocessConfig) -> Sequences:
    """Runs steps 1-5 of the module docstring on ``log``."""
    frame = log.interactions.reset_index(drop=True)
    frame = frame.assign(order=range(len(frame)))
    frame = implicit_feedback(frame, config.min_rating)
    frame = k_core(frame, config.min_user_interactions, config.min_item_interactions)
    if frame.empty:
        raise ValueError(
            f"{log.name}: no interactions left after filtering (min_rating={config.min_rating}, "
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
    return Sequences(
        items=torch.as_tensor(item_codes, dtype=torch.long) + 1,
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        num_items=len(item_raw),
        item_raw_ids=torch.cat([torch.tensor([-1]), torch.tensor(item_raw.to_numpy(),
                                                                  dtype=torch.long)]),
        user_raw_ids=torch.tensor(user_raw.to_numpy(), dtype=torch.long),
        heldout_users=heldout,
        validation_users=validation,
        ratings=None if frame["rating"].isna().any()
        else torch.tensor(frame["rating"].to_numpy(), dtype=torch.float32),
        item_texts=item_texts_from(log.items, item_raw),
    )


def source_fingerprint(path: Path) -> dict[str, int | str]:
    """Identifies the data on disk cheaply: every file's name, size and modification time."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {str(p.relative_to(path) if path.is_dir() else p.name):
            f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files}


def cache_key(path: Path, format: str, config: PreprocessConfig, columns: dict) -> str:
    payload = {"source": source_fingerprint(path), "format": format, "config": asdict(config),
               "columns": columns, "version": 3}  # 3: item_texts
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def load_sequences(path: Path | str, format: str, config: PreprocessConfig,
                   cache_dir: Path | str | None = None, **columns: str | None) -> Sequences:
    """Reads and preprocesses a log, through an on-disk cache keyed by data and config.

    The cache file is written atomically and read with ``torch.load(weights_only=True)``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"data.path={str(path)!r} does not exist; download it first "
            "(python -m recrl.data download ml-100k) or point data.path at it"
        )
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{path.name}-{cache_key(path, format, config, columns)}.pt"
        if cache_file.is_file():
            state = torch.load(cache_file, weights_only=True)
            return Sequences(**state)
    sequences = preprocess(read_log(format, path, **columns), config)
    if cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(".tmp")
        torch.save(sequences.state_dict(), tmp)
        os.replace(tmp, cache_file)
    return sequences
