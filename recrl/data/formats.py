"""Readers of the interaction-log formats recrl understands, each to one common table.

Every reader returns a ``RawLog``: an ``interactions`` DataFrame with columns ``user``, ``item``
(raw ids, as the file has them: integers where every id is one, else text), ``timestamp`` (one
sortable order: integers or floats as written, ISO date-times and Parquet datetimes as
nanoseconds since 1970 UTC; where a log has no time, the position of the line, which is the time
order such files promise) and ``rating`` (float, NaN where the format has none or the cell is
blank), plus an ``items`` DataFrame of item text (``item``, ``title``, ``genres``) when the format
ships one, and ``details``: how the file was read (id kinds, time kind, which columns), for the
data summary. Nothing is filtered or re-indexed here: that is ``recrl.data.preprocess``.

Any problem with a file ends in a ``DataFormatError`` naming the file, what is wrong with it and,
where one exists, the ``data.*`` setting that fixes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

#: The columns every reader produces, in this order.
COLUMNS = ["user", "item", "timestamp", "rating"]

#: MovieLens-100K's 19 genre flags in ``u.item``, in file order (from its ``u.genre``).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]

#: Formats that read a folder, and the file in it that holds the interactions: ``data.path`` may
#: name the folder or any file inside it.
FOLDER_FORMATS = {"ml-100k": "u.data", "movielens-dat": "ratings.dat",
                  "movielens-csv": "ratings.csv"}

#: ``format=table``: the separator a file suffix implies (``data.sep: null``); other suffixes are
#: read from the first line. Parquet files have no separator.
SUFFIX_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
#: Names ``data.sep`` accepts for separators a command line mangles (``data.sep=tab``).
SEPARATOR_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
                   "space": " ", "whitespace": r"\s+"}
#: Separators recognised in the first line of a file whose suffix implies none, most likely first.
SNIFFED_SEPARATORS = ["\t", ",", ";", "|"]

#: ``format=table``'s default column names. ``timestamp`` and ``rating`` are optional under their
#: default names: a file without such a column has no time (file order) or no ratings. Any other
#: name (``data.columns.rating=stars``) must exist.
DEFAULT_COLUMNS = {"user": "user", "item": "item", "timestamp": "timestamp", "rating": "rating"}
OPTIONAL_ROLES = ("timestamp", "rating")

#: Cell texts that mean "no rating" (pandas, R and SQL exports write these for a missing value).
BLANK_TEXTS = ["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None", "none"]


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
    # How the file was read, for the data summary: user_ids / item_ids ("integer" | "text"),
    # timestamps ("integer" | "float" | "datetime" | "file order"), the columns used.
    details: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the file (or folder) read: what preprocessing's messages name


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DataFormatError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataFormatError(path, "the file is empty")
    return path


def _read_delimited(path: Path, sep: str, names: list[str] | None, encoding: str = "utf-8",
                    header: int | None = None) -> pd.DataFrame:
    """Every cell as text (ids and times are parsed by the caller, which names bad values).

    ``header=0``: the first line names the columns; ``None``: no header, the columns are
    ``names``, or positions ``0, 1, ...`` without names."""
    _require_file(path)
    try:
        frame = pd.read_csv(path, sep=sep, names=names, header=header, encoding=encoding,
                            # "::" needs the Python engine; one character and r"\s+" the fast C one.
                            engine="python" if len(sep) > 1 and sep != r"\s+" else "c",
                            dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataFormatError(path, f"cannot be parsed ({err})") from None
    if frame.empty:
        raise DataFormatError(path, "the file has no rows")
    return frame


def _first_bad_row(bad: pd.Series) -> int:
    """The position of the first True of ``bad`` (a data row, 0-based)."""
    return int(bad.to_numpy().nonzero()[0][0])


def _numeric(frame: pd.DataFrame, column: str, path: Path, kind: str = "integer") -> pd.Series:
    """The column as numbers, or an error naming the first bad value and its data row.

    ``integer`` columns (ids, times) must be whole numbers everywhere; ``number`` columns
    (ratings) may be blank (``BLANK_TEXTS``), which reads as NaN.
    """
    values = frame[column]
    if kind == "number" and pd.api.types.is_numeric_dtype(values):  # Parquet: typed already
        return values.astype("float64")
    text = values.astype(str).str.strip().where(values.notna(), "")
    numbers = pd.to_numeric(text.where(~text.isin(BLANK_TEXTS)) if kind == "number" else text,
                            errors="coerce")
    if kind == "integer":
        bad = numbers.isna() | (numbers != numbers.round())
    else:
        bad = numbers.isna() & ~text.isin(BLANK_TEXTS)
    if bad.any():
        row = _first_bad_row(bad)
        raise DataFormatError(
            path, f"column {column!r} must be {kind}, got {values.iloc[row]!r} on data row "
            f"{row + 1}"
        )
    return numbers.astype("int64") if kind == "integer" else numbers.astype("float64")


def _check_columns(frame: pd.DataFrame, path: Path, expected: int) -> None:
    """Rows with missing fields show up as empty strings (or None) in the last columns."""
    last = frame.columns[expected - 1]
    missing = frame[last].isna() | (frame[last].astype(str).str.strip() == "")
    if missing.any():
        row = _first_bad_row(missing)
        raise DataFormatError(
            path, f"data row {row + 1} has fewer than the {expected} fields this format needs"
        )


def _interactions(user, item, timestamp, rating) -> pd.DataFrame:
    return pd.DataFrame({"user": user, "item": item, "timestamp": timestamp,
                         "rating": rating}, columns=COLUMNS)


#: What the MovieLens readers report: integer ids and times, a rating column.
MOVIELENS_DETAILS = {"user_ids": "integer", "item_ids": "integer", "timestamps": "integer",
                     "rating_column": "rating"}


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
    return RawLog(interactions, items, name="ml-100k", details=dict(MOVIELENS_DETAILS),
                  source=str(folder / "u.data"))


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
    return RawLog(interactions, items, name=folder.name, details=dict(MOVIELENS_DETAILS),
                  source=str(folder / "ratings.dat"))


def read_movielens_csv(folder: Path | str) -> RawLog:
    """MovieLens latest/20M/25M: ``ratings.csv`` (userId,movieId,rating,timestamp), ``movies.csv``."""
    folder = Path(folder)
    path = _require_file(folder / "ratings.csv")
    frame = _read_delimited(path, ",", None, header=0)
    missing = [c for c in ("userId", "movieId", "rating", "timestamp") if c not in frame.columns]
    if missing:
        raise DataFormatError(
            path, f"missing column(s) {missing} of MovieLens's ratings.csv (columns: "
            f"{', '.join(map(str, frame.columns))}); for other columns use data.format=table"
        )
    interactions = _interactions(
        _numeric(frame, "userId", path), _numeric(frame, "movieId", path),
        _numeric(frame, "timestamp", path), _numeric(frame, "rating", path, "number"),
    )
    items = None
    movies = folder / "movies.csv"
    if movies.is_file():
        meta = _read_delimited(movies, ",", None, header=0)
        for column in ("movieId", "title", "genres"):
            if column not in meta.columns:
                raise DataFormatError(movies, f"missing column {column!r}")
        items = pd.DataFrame({"item": _numeric(meta, "movieId", movies), "title": meta["title"],
                              "genres": meta["genres"]})
    return RawLog(interactions, items, name=folder.name, details=dict(MOVIELENS_DETAILS),
                  source=str(path))


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
    details = {"user_ids": "integer", "item_ids": "integer", "timestamps": "file order",
               "rating_column": None}
    return RawLog(interactions, None, name=path.stem, details=details, source=str(path))


# -- format=table: any CSV / TSV / Parquet log -----------------------------------------------------
def table_separator(path: Path, sep: str | None) -> str | None:
    """The separator of a table file: ``sep`` (or the character a ``SEPARATOR_NAMES`` name
    stands for), else the one its suffix implies, else the most frequent of
    ``SNIFFED_SEPARATORS`` in its first line, else whitespace; None for Parquet."""
    if path.suffix == ".parquet":
        return None
    if sep is not None:
        return SEPARATOR_NAMES.get(sep, sep)
    if path.suffix.lower() in SUFFIX_SEPARATORS:
        return SUFFIX_SEPARATORS[path.suffix.lower()]
    with open(path, encoding="utf-8", errors="replace") as file:
        first = file.readline()
    counts = {candidate: first.count(candidate) for candidate in SNIFFED_SEPARATORS}
    best = max(counts, key=counts.get)
    return best if counts[best] else r"\s+"


def _read_table_frame(path: Path, sep: str | None, header: bool) -> pd.DataFrame:
    """The file as a DataFrame: text cells from CSV/TSV, typed ones from Parquet; columns named
    by the header, or positions ``0, 1, ...`` without one."""
    if sep is None:  # Parquet
        try:
            frame = pd.read_parquet(path)
        except Exception as err:  # pyarrow raises its own error types for every kind of damage
            raise DataFormatError(path, f"cannot be read as Parquet ({err})") from None
        if frame.empty:
            raise DataFormatError(path, "the file has no rows")
        if not header:
            frame.columns = range(frame.shape[1])
        return frame
    return _read_delimited(path, sep, None, header=0 if header else None)


def _separator_hint(frame: pd.DataFrame, sep: str | None) -> str:
    """A hint when a file was split on the wrong separator: it then has one column whose name
    (or first cell) holds another one."""
    if sep is None or frame.shape[1] != 1:
        return ""
    first = f"{frame.columns[0]}{frame.iloc[0, 0]}"
    for candidate in SNIFFED_SEPARATORS:
        if candidate != sep and candidate in first:
            name = next(k for k, v in SEPARATOR_NAMES.items() if v == candidate)
            return f" (the file looks {name}-separated: set data.sep={name})"
    return ""


def _header_hint(frame: pd.DataFrame) -> str:
    """A hint when a file without a header is read as if it had one: its 'names' are numbers."""
    names = pd.Series([str(c) for c in frame.columns])
    if pd.to_numeric(names, errors="coerce").notna().all():
        return (" (the first line looks like data: set data.header=false and name columns by "
                "position, data.columns.user=0)")
    return ""


def _position(spec: Any) -> int | None:
    """A column position given as ``data.columns.<role>=2`` (an int, or digits)."""
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int):
        return spec
    return int(spec) if isinstance(spec, str) and spec.strip().isdigit() else None


def resolve_columns(frame: pd.DataFrame, path: Path, columns: Mapping[str, Any], header: bool,
                    sep: str | None = None) -> dict[str, Any]:
    """Which column of ``frame`` each role (user, item, timestamp, rating) reads; None: absent.

    ``columns`` are ``data.columns`` (unset roles take ``DEFAULT_COLUMNS``). A timestamp or
    rating column under its default name is used where the file has it and is absent otherwise;
    any other name, and the user and item columns, must exist. Without a header, columns are
    positions. One error names every missing column and the setting of each."""
    specs = {**DEFAULT_COLUMNS, **dict(columns)}
    unknown = sorted(set(specs) - set(DEFAULT_COLUMNS))
    if unknown:
        raise ValueError(f"data.columns.{unknown[0]} is not a column role; the roles are "
                         f"{', '.join(DEFAULT_COLUMNS)}")
    resolved: dict[str, Any] = {}
    missing: list[str] = []
    for role, spec in specs.items():
        optional_default = role in OPTIONAL_ROLES and spec == DEFAULT_COLUMNS[role]
        if spec is None:
            resolved[role] = None
            continue
        if header:
            label = spec if spec in frame.columns else str(spec)
            found = label in frame.columns
        else:
            label = _position(spec)
            if label is None and not optional_default:
                raise DataFormatError(
                    path, f"data.header=false, so columns are positions: set "
                    f"data.columns.{role}=<0..{frame.shape[1] - 1}> (got {spec!r})")
            found = label is not None and 0 <= label < frame.shape[1]
        if found:
            resolved[role] = label
        elif optional_default:
            resolved[role] = None
        else:
            missing.append(role)
    if missing:
        what = ", ".join(repr(str(specs[r])) for r in missing)
        noun = "column" if len(missing) == 1 else "columns"
        kind = "name" if header else f"0..{frame.shape[1] - 1}"
        fix = " and ".join(f"data.columns.{r}=<{kind}>" for r in missing)
        have = (", ".join(map(str, frame.columns)) if header
                else f"{frame.shape[1]} columns, positions 0..{frame.shape[1] - 1}")
        hint = _separator_hint(frame, sep) or (_header_hint(frame) if header else "")
        if header and not hint and any(_position(specs[r]) is not None for r in missing):
            hint = " (column positions need data.header=false)"
        raise DataFormatError(path, f"{noun} {what} not found (columns: {have}): set {fix}{hint}")
    return resolved


def _ids(values: pd.Series, column: Any, path: Path) -> tuple[pd.Series, str]:
    """Ids as the file has them: integers (``"integer"``) where every id is the canonical text of
    one (so ``"007"`` and ``"7"`` stay two ids), else text (``"text"``). A blank id is an error."""
    if pd.api.types.is_integer_dtype(values):
        return values.astype("int64"), "integer"
    blank = values.isna()
    text = values.astype(str).str.strip().where(~blank, "")
    blank |= text == ""
    if blank.any():
        row = _first_bad_row(blank)
        raise DataFormatError(path, f"column {column!r} has no id on data row {row + 1}")
    if pd.api.types.is_float_dtype(values) and (values == values.round()).all():
        return values.astype("int64"), "integer"  # Parquet floats that are whole numbers
    numbers = pd.to_numeric(text, errors="coerce")
    whole = numbers.notna() & (numbers == numbers.round())
    if whole.all():
        canonical = numbers.astype("int64").astype(str) == text
        if canonical.all():
            return numbers.astype("int64"), "integer"
    return text.astype(object), "text"


def _timestamps(values: pd.Series, column: Any, path: Path) -> tuple[pd.Series, str]:
    """One sortable order from whatever the column holds: integers and floats as they are,
    datetimes (Parquet) and ISO 8601 texts as int64 nanoseconds since 1970 UTC (naive times are
    taken as UTC). The kind is ``"integer"``, ``"float"`` or ``"datetime"``."""
    if pd.api.types.is_datetime64_any_dtype(values):
        if values.isna().any():
            row = _first_bad_row(values.isna())
            raise DataFormatError(path, f"column {column!r} has no time on data row {row + 1}")
        if getattr(values.dt, "tz", None) is not None:
            values = values.dt.tz_convert("UTC").dt.tz_localize(None)
        return values.astype("datetime64[ns]").astype("int64"), "datetime"
    if pd.api.types.is_numeric_dtype(values) and values.notna().all():  # Parquet: typed already
        numbers = values
    else:
        text = values.astype(str).str.strip().where(values.notna(), "")
        numbers = pd.to_numeric(text, errors="coerce")
    if numbers.notna().all():
        if (numbers == numbers.round()).all():
            return numbers.astype("int64"), "integer"
        return numbers.astype("float64"), "float"
    times = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    bad = times.isna()
    if bad.any():
        row = _first_bad_row(bad)
        raise DataFormatError(
            path, f"column {column!r} must hold numbers or ISO 8601 date-times, got "
            f"{values.iloc[row]!r} on data row {row + 1} (data.columns.timestamp=null: file order)"
        )
    return times.dt.tz_localize(None).astype("datetime64[ns]").astype("int64"), "datetime"


def read_table(path: Path | str, *, columns: Mapping[str, Any] | None = None,
               sep: str | None = None, header: bool = True, **named: Any) -> RawLog:
    """Any CSV / TSV / Parquet log (``format=table``), its columns named by ``columns``
    (``data.columns``; see ``resolve_columns``; ``named``: the same roles as keywords,
    ``user="uid"``), split on ``sep`` (``data.sep``; see ``table_separator``), with a header
    line or without (``data.header``: then columns are positions). Without a timestamp column,
    the row order is taken as the time order."""
    path = _require_file(Path(path))
    separator = table_separator(path, sep)
    frame = _read_table_frame(path, separator, header)
    used = resolve_columns(frame, path, {**(columns or {}), **named}, header, separator)
    user, user_kind = _ids(frame[used["user"]], used["user"], path)
    item, item_kind = _ids(frame[used["item"]], used["item"], path)
    if used["timestamp"] is None:
        timestamp, time_kind = pd.RangeIndex(len(frame)).to_numpy(), "file order"
    else:
        timestamp, time_kind = _timestamps(frame[used["timestamp"]], used["timestamp"], path)
    rating = (float("nan") if used["rating"] is None
              else _numeric(frame, used["rating"], path, "number"))
    details = {"user_ids": user_kind, "item_ids": item_kind, "timestamps": time_kind,
               "rating_column": used["rating"], "columns": used,
               "separator": "parquet" if separator is None else separator, "header": header}
    return RawLog(_interactions(user, item, timestamp, rating), None, name=path.stem,
                  details=details, source=str(path))


#: Which reader a named format uses.
READERS = {
    "ml-100k": read_ml100k,
    "movielens-dat": read_movielens_dat,
    "movielens-csv": read_movielens_csv,
    "sequences": read_sequences,
    "table": read_table,
}


def check_format(format: str) -> None:
    if format not in READERS:
        raise ValueError(f"data.format={format!r} is not one of {', '.join(READERS)}")


def resolve_source(path: Path | str, format: str) -> Path:
    """What ``data.path`` points the reader of ``format`` at: a folder format reads the folder
    (``data.path`` may name it or any file inside it); a file format reads one file (a folder is
    refused, naming the files it holds)."""
    check_format(format)
    path = Path(path).expanduser()
    if format in FOLDER_FORMATS:
        folder = path.parent if path.is_file() else path
        wanted = FOLDER_FORMATS[format]
        if folder.is_dir() and not (folder / wanted).is_file():
            raise DataFormatError(
                folder, f"has no {wanted}, which data.format={format} reads: set data.path to "
                f"the folder that holds {wanted} (or the data.format of this log)")
        return folder
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.is_file())[:5]
        raise DataFormatError(
            path, f"is a folder, and data.format={format} reads one file: set "
            f"data.path=<folder>/<file> (it holds: {', '.join(inside) or 'no files'})")
    return path


def normalise_options(source: Path, format: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` as ``format``'s reader applies them (default columns filled in, separator
    names and inferred separators resolved; nothing for formats that take none): two ways of
    asking for the same reading share one cache entry, and any change makes a new one."""
    if format != "table":
        return {}
    options = dict(options)
    columns = {**DEFAULT_COLUMNS, **dict(options.pop("columns", None) or {})}
    columns.update({role: options.pop(role) for role in DEFAULT_COLUMNS if role in options})
    sep = options.pop("sep", None)
    return {"columns": columns, "sep": table_separator(source, sep) if source.is_file() else sep,
            "header": options.pop("header", True), **options}


def read_log(format: str, path: Path | str, **options: Any) -> RawLog:
    """Reads ``path`` with the reader of ``format`` (one of ``READERS``); ``options``
    (``columns``, ``sep``, ``header``) are ``format=table``'s and ignored by the others."""
    source = resolve_source(path, format)
    if format == "table":
        return read_table(source, **options)
    return READERS[format](source)
