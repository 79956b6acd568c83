"""Readers of the interaction-log formats recrl understands, each to one common table.

Every reader returns a ``RawLog``: an ``interactions`` DataFrame with columns ``user``, ``item``
(raw ids, as the file has them), ``timestamp`` (int; where a format has no time, the position of
the line, which is the time order such files promise) and ``rating`` (float, NaN where the format
has none), plus an ``items`` DataFrame of item text (``item``, ``title``, ``genres``) when the
format ships one. Nothing is filtered or re-indexed here: that is ``recrl.data.preprocess``.

Any problem with a file ends in a ``DataFormatError`` naming the file and what is wrong with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

#: The columns every reader produces, in this order.
COLUMNS = ["user", "item", "timestamp", "rating"]

#: MovieLens-100K's 19 genre flags in ``u.item``, in file order (from its ``u.genre``).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]


class DataFormatError(ValueError):
    """A data file that cannot be read as the format it should have; names the file."""

    def __init__(self, path: Path | str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = Path(path)


@dataclass
class RawLog:
    """An interaction log as read from disk, before any preprocessing."""

    interactions: pd.DataFrame  # columns COLUMNS
    items: pd.DataFrame | None = None  # item, title, genres
    name: str = ""


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "the file is empty")
    return path


def _read_delimited(path: Path, sep: str, names: list[str], encoding: str = "utf-8",
                    header: int | None = None) -> pd.DataFrame:
    _require_file(path)
    try:
        frame = pd.read_csv(path, sep=sep, names=names if header is None else None,
                            header=header, encoding=encoding,
                            # "::" needs the Python engine; one character and r"\s+" the fast C one.
                            engine="python" if len(sep) > 1 and sep != r"\s+" else "c",
                            dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"cannot be parsed ({err})") from None
    if frame.empty:
        raise DataFormatError(path, "the file has no rows")
    return frame


def _numeric(frame: pd.DataFrame, column: str, path: Path, kind: str = "integer") -> pd.Series:
    """The column as numbers, or an error naming the first bad value and its data row.

    ``integer`` columns (ids, times) must be whole numbers everywhere; ``number`` columns
    (ratings) may be empty, which reads as NaN.
    """
    text = frame[column].astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce")
    if kind == "integer":
        bad = values.isna() | (values != values.round())
    else:
        bad = values.isna() & (text != "")
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataFormatError(
            path, f"column {column!r} must be {kind}, got {frame[column].iloc[row]!r} on data row "
            f"{row + 1}"
        )
    return values.astype("int64") if kind == "integer" else values.astype("float64")


def _check_columns(frame: pd.DataFrame, path: Path, expected: int) -> None:
    """Rows with missing fields show up as empty strings (or None) in the last columns."""
    last = frame.columns[expected - 1]
    missing = frame[last].isna() | (frame[last].astype(str).str.strip() == "")
    if missing.any():
        row = int(missing.to_numpy().nonzero()[0][0])
        raise DataFormatError(
            path, f"data row {row + 1} has fewer than the {expected} fields this format needs"
        )


def _interactions(user, item, timestamp, rating) -> pd.DataFrame:
    return pd.DataFrame({"user": user, "item": item, "timestamp": timestamp,
                         "rating": rating}, columns=COLUMNS)


def _read_rating_file(path: Path, sep: str, encoding: str = "utf-8") -> pd.DataFrame:
    """MovieLens's header-less ``user, item, rating, time`` files (``u.data``, ``ratings.dat``)."""
    frame = _read_delimited(path, sep, ["user", "item", "rating", "timestamp"], encoding)
    _check_columns(frame, path, 4)
    return _interactions(
        _numeric(frame, "user", path), _numeric(frame, "item", path),
        _numeric(frame, "timestamp", path), _numeric(frame, "rating", path, "number"),
    )


def read_ml100k(folder: Path | str) -> RawLog:
    """MovieLens-100K: ``u.data`` (user, item, rating, time; tabs) and ``u.item`` (Latin-1)."""
    folder = Path(folder)
    interactions = _read_rating_file(folder / "u.data", "\t")
    items = None
    item_path = folder / "u.item"
    if item_path.is_file():
        names = ["item", "title", "release", "video_release", "url", *ML100K_GENRES]
        meta = _read_delimited(item_path, "|", names, encoding="latin-1")
        flags = meta[ML100K_GENRES].apply(pd.to_numeric, errors="coerce").fillna(0).astype(int)
        # "Action|Comedy" from the 0/1 flags: a product with the genre names, no row loop.
        genres = flags.dot(pd.Index(ML100K_GENRES) + "|").str.rstrip("|")
        items = pd.DataFrame({"item": _numeric(meta, "item", item_path), "title": meta["title"],
                              "genres": genres})
    return RawLog(interactions, items, name="ml-100k")


def read_movielens_dat(folder: Path | str) -> RawLog:
    """MovieLens-1M/10M: ``ratings.dat`` (``user::item::rating::time``) and ``movies.dat``."""
    folder = Path(folder)
    interactions = _read_rating_file(folder / "ratings.dat", "::", "latin-1")
    items = None
    movies = folder / "movies.dat"
    if movies.is_file():
        meta = _read_delimited(movies, "::", ["item", "title", "genres"], "latin-1")
        items = pd.DataFrame({"item": _numeric(meta, "item", movies), "title": meta["title"],
                              "genres": meta["genres"]})
    return RawLog(interactions, items, name=folder.name)


def read_movielens_csv(folder: Path | str) -> RawLog:
    """MovieLens latest/20M/25M: ``ratings.csv`` (userId,movieId,rating,timestamp), ``movies.csv``."""
    folder = Path(folder)
    path = folder / "ratings.csv"
    table = read_table(path, user="userId", item="movieId", timestamp="timestamp",
                       rating="rating")
    items = None
    movies = folder / "movies.csv"
    if movies.is_file():
        meta = _read_delimited(movies, ",", [], header=0)
        for column in ("movieId", "title", "genres"):
            if column not in meta.columns:
                raise DataFormatError(movies, f"missing column {column!r}")
        items = pd.DataFrame({"item": _numeric(meta, "movieId", movies), "title": meta["title"],
                              "genres": meta["genres"]})
    return RawLog(table.interactions, items, name=folder.name)


def read_sequences(path: Path | str) -> RawLog:
    """The BERT4Rec/SASRec format: one ``user item`` pair a line, each user's lines in time order.

    The format has no timestamps: a line's position is its time, which keeps each user's order.
    """
    path = _require_file(Path(path))
    frame = _read_delimited(path, r"\s+", ["user", "item"])
    _check_columns(frame, path, 2)
    interactions = _interactions(
        _numeric(frame, "user", path), _numeric(frame, "item", path),
        pd.RangeIndex(len(frame)).to_numpy(), float("nan"),
    )
    return RawLog(interactions, None, name=path.stem)


def read_table(path: Path | str, *, user: str = "user", item: str = "item",
               timestamp: str | None = "timestamp", rating: str | None = None) -> RawLog:
    """Any CSV (or ``.parquet``) log with named columns; ``timestamp``/``rating`` may be None.

    Without a timestamp column, the row order is taken as the time order.
    """
    path = _require_file(Path(path))
    if path.suffix == ".parquet":
        try:
            frame = pd.read_parquet(path).astype(str)
        except Exception as err:  # pyarrow raises its own error types for every kind of damage
            raise DataFormatError(path, f"cannot be read as Parquet ({err})") from None
        if frame.empty:
            raise DataFormatError(path, "the file has no rows")
    else:
        frame = _read_delimited(path, ",", [], header=0)
    wanted = [c for c in (user, item, timestamp, rating) if c is not None]
    missing = [c for c in wanted if c not in frame.columns]
    if missing:
        raise DataFormatError(
            path, f"missing column(s) {missing}; the file has {list(frame.columns)} "
            "(name the right ones in the data config)"
        )
    interactions = _interactions(
        _numeric(frame, user, path), _numeric(frame, item, path),
        _numeric(frame, timestamp, path) if timestamp else pd.RangeIndex(len(frame)).to_numpy(),
        _numeric(frame, rating, path, "number") if rating else float("nan"),
    )
    return RawLog(interactions, None, name=path.stem)


#: Which reader a named format uses.
READERS = {
    "ml-100k": read_ml100k,
    "movielens-dat": read_movielens_dat,
    "movielens-csv": read_movielens_csv,
    "sequences": read_sequences,
    "table": read_table,
}


def read_log(format: str, path: Path | str, **columns: str | None) -> RawLog:
    """Reads ``path`` with the reader of ``format`` (one of ``READERS``)."""
    if format not in READERS:
        raise ValueError(f"data.format={format!r} is not one of {sorted(READERS)}")
    reader = READERS[format]
    return reader(path, **columns) if format == "table" else reader(path)
