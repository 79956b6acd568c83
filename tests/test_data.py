"""Real logs: every reader, preprocessing against hand-made logs, the cache, downloads, bad files.

Real data is read from ``../shared/data`` (or ``$RECRL_TEST_DATA``), never copied into the repo;
tests that need it skip, saying why, where it is absent. The download test serves a zip built in a
temporary folder from a local HTTP server on 127.0.0.1: no test touches the internet.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import logging
import sys
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path

import pandas as pd
import pytest
import torch

from recrl.data import (
    DataFormatError, PreprocessConfig, Sequences, load_sequences, preprocess, read_log,
)
from recrl.data.download import DownloadError, download
from recrl.data.formats import RawLog, read_ml100k, read_sequences
from tests.conftest import BEAUTY, ML100K, needs_beauty, needs_ml100k, run_process

RAW = PreprocessConfig(min_user_interactions=3, min_item_interactions=1)  # keeps all of ML-100K


# -- real data ------------------------------------------------------------------------------
@needs_ml100k
def test_movielens_100k_loads_to_its_published_counts() -> None:
    log = read_ml100k(ML100K)
    assert len(log.interactions) == 100_000
    assert log.interactions["user"].nunique() == 943
    assert log.interactions["item"].nunique() == 1_682
    assert log.interactions["rating"].between(1, 5).all()
    # u.item is Latin-1: a title with a non-ASCII letter survives intact.
    titles = log.items.set_index("item")["title"]
    assert len(titles) == 1_682 and titles[1] == "Toy Story (1995)"
    assert any("é" in t for t in titles)
    assert log.items.set_index("item").loc[1, "genres"] == "Animation|Children's|Comedy"
    sequences = preprocess(log, RAW)
    assert (sequences.num_users, sequences.num_items, sequences.num_interactions) == (
        943, 1_682, 100_000)
    assert sequences.lengths.min().item() >= 20  # every ML-100K user has >= 20 ratings


@needs_beauty
def test_amazon_beauty_loads_to_its_published_counts() -> None:
    sequences = preprocess(read_sequences(BEAUTY), RAW)
    assert (sequences.num_users, sequences.num_items, sequences.num_interactions) == (
        40_226, 54_542, 353_962)


# -- every format, on small files written here ------------------------------------------------
def test_movielens_dat_csv_sequence_and_table_formats(tmp_path: Path) -> None:
    dat = tmp_path / "ml-1m"
    dat.mkdir()
    (dat / "ratings.dat").write_text("1::10::5::300\n1::20::3::100\n2::10::4::200\n")
    (dat / "movies.dat").write_bytes("10::Amélie (2001)::Comedy|Romance\n20::Heat (1995)::Action\n"
                                     .encode("latin-1"))
    log = read_log("movielens-dat", dat)
    assert log.interactions.to_dict("list") == {
        "user": [1, 1, 2], "item": [10, 20, 10], "timestamp": [300, 100, 200],
        "rating": [5.0, 3.0, 4.0]}
    assert log.items.set_index("item").loc[10, "title"] == "Amélie (2001)"

    csv = tmp_path / "ml-latest-small"
    csv.mkdir()
    (csv / "ratings.csv").write_text("userId,movieId,rating,timestamp\n7,3,4.5,11\n7,4,2.0,12\n")
    (csv / "movies.csv").write_text('movieId,title,genres\n3,"Heat, The (1995)",Action\n4,X,Drama\n')
    log = read_log("movielens-csv", csv)
    assert log.interactions["rating"].tolist() == [4.5, 2.0]
    assert log.items.set_index("item").loc[3, "title"] == "Heat, The (1995)"

    seq = tmp_path / "beauty.txt"
    seq.write_text("1 5\n1 6\n2 5\n")
    log = read_log("sequences", seq)
    assert log.interactions["timestamp"].tolist() == [0, 1, 2]  # line order is time order
    assert log.interactions["rating"].isna().all()

    table = tmp_path / "log.csv"
    table.write_text("uid,iid,ts\n9,1,5\n9,2,6\n")
    log = read_log("table", table, user="uid", item="iid", timestamp="ts", rating=None)
    assert log.interactions[["user", "item", "timestamp"]].values.tolist() == [[9, 1, 5], [9, 2, 6]]

    parquet = tmp_path / "log.parquet"
    pd.DataFrame({"u": [1, 1], "i": [3, 4], "t": [2, 1]}).to_parquet(parquet)
    log = read_log("table", parquet, user="u", item="i", timestamp="t", rating=None)
    assert log.interactions["item"].tolist() == [3, 4]


# -- preprocessing, against a hand-made log ----------------------------------------------------
def hand_made_log() -> RawLog:
    """Users 10, 20, 30; items 100..104. User 30 has two interactions (dropped by 3-core)."""
    rows = [  # user, item, timestamp, rating
        (10, 101, 5, 5.0), (10, 100, 1, 4.0), (10, 102, 3, 2.0), (10, 103, 9, 5.0),
        (20, 100, 2, 5.0), (20, 103, 2, 4.0), (20, 101, 1, 4.0), (20, 104, 8, 1.0),
        (30, 100, 1, 5.0), (30, 101, 2, 5.0),
    ]
    return RawLog(pd.DataFrame(rows, columns=["user", "item", "timestamp", "rating"]), name="hand")


def test_threshold_k_core_chronological_order_and_reindexing() -> None:
    config = PreprocessConfig(min_rating=4.0, min_user_interactions=3, min_item_interactions=2,
                              validation_user_fraction=0.0, test_user_fraction=0.0)
    sequences = preprocess(hand_made_log(), config)
    # min_rating 4 drops (10,102) and (20,104); user 30 then has 2 < 3 interactions -> dropped;
    # every remaining item (100, 101, 103) has 2 interactions -> kept.
    assert sequences.num_users == 2 and sequences.num_items == 3
    # Chronological per user; ties (user 20 at t=2) keep file order (100 before 103).
    raw = sequences.item_raw_ids
    assert raw[sequences.user_sequence(0)].tolist() == [100, 101, 103]
    assert raw[sequences.user_sequence(1)].tolist() == [101, 100, 103]
    assert raw[0].item() == -1 and sequences.items.min().item() == 1  # 0 stays padding
    train, offsets, valid, test = sequences.leave_one_out()
    assert raw[test].tolist() == [103, 103]
    assert raw[valid].tolist() == [101, 100]
    assert raw[train].tolist() == [100, 101] and offsets.tolist() == [0, 1, 2]


def test_user_level_split_is_seeded() -> None:
    config = PreprocessConfig(min_user_interactions=3, min_item_interactions=1,
                              test_user_fraction=0.5, validation_user_fraction=0.0, split_seed=3)
    first = preprocess(hand_made_log(), config)
    again = preprocess(hand_made_log(), config)
    assert torch.equal(first.heldout_users, again.heldout_users)
    assert first.heldout_users.sum().item() == 1  # 2 users -> 1 held out, for testing
    assert torch.equal(first.test_users, first.heldout_users) and not first.validation_users.any()


def test_the_three_way_split_keeps_the_ten_percent_hold_out_and_halves_it() -> None:
    """Validation and test users are disjoint; at 0.05 + 0.05 they are, together, exactly the
    users the single 10% hold-out of one seeded permutation took (so the training users of
    earlier runs are unchanged)."""
    users = [(u, i, t, 5.0) for u in range(40) for t, i in enumerate(range(u % 7, u % 7 + 4))]
    log = RawLog(pd.DataFrame(users, columns=["user", "item", "timestamp", "rating"]), name="40")
    sequences = preprocess(log, PreprocessConfig(min_user_interactions=3, min_item_interactions=1,
                                                 split_seed=5))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    assert set(torch.nonzero(sequences.heldout_users).squeeze(1).tolist()) == set(order[:4].tolist())
    assert sequences.users_of("test").tolist() == sorted(order[:2].tolist())
    assert sequences.users_of("validation").tolist() == sorted(order[2:4].tolist())
    with pytest.raises(ValueError, match="validation_user_fraction"):
        PreprocessConfig(validation_user_fraction=0.6, test_user_fraction=0.5)


def test_preprocessed_tensors_are_cached_by_data_and_config(tmp_path: Path) -> None:
    source = tmp_path / "log.txt"
    source.write_text("".join(f"{u} {i}\n" for u in range(1, 5) for i in range(1, 6)))
    cache = tmp_path / "cache"
    first = load_sequences(source, "sequences", RAW, cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 1
    again = load_sequences(source, "sequences", RAW, cache_dir=cache)
    assert torch.equal(first.items, again.items) and torch.equal(first.offsets, again.offsets)
    load_sequences(source, "sequences", PreprocessConfig(min_user_interactions=4, min_item_interactions=1),
                   cache_dir=cache)
    assert len(list(cache.glob("*.pt"))) == 2  # another config, another entry


# -- logs recrl has never seen: ids, times, separators, headers, paths ----------------------------
LOOSE = PreprocessConfig(min_user_interactions=3, min_item_interactions=1,
                         validation_user_fraction=0.0, test_user_fraction=0.0)


def in_order(sequences, user: int) -> list:
    """A user's raw item ids in the order the sequences hold them (chronological)."""
    return sequences.item_ids[sequences.user_sequence(user).numpy()].tolist()


def test_text_ids_and_iso_times_are_read_as_they_come(tmp_path: Path) -> None:
    """Text ids map to indices and back (Sequences.user_ids / item_ids); ISO 8601 times with and
    without an offset become one order (naive times are UTC)."""
    path = tmp_path / "log.csv"
    path.write_text("uid,sku,ts\n"
                    "bob,sku-9,2024-01-01T12:00:00+02:00\n"  # 10:00 UTC: bob's second
                    "bob,sku-1,2024-01-01T09:00:00Z\n"
                    "alice,007,2024-01-03\n"
                    "bob,sku-3,2024-01-02 08:30\n"
                    "alice,7,2024-01-02\n"
                    "alice,sku-1,2024-01-01\n")
    log = read_log("table", path, columns={"user": "uid", "item": "sku", "timestamp": "ts"})
    assert log.details["user_ids"] == "text" and log.details["timestamps"] == "datetime"
    sequences = preprocess(log, LOOSE)
    assert sequences.user_ids.tolist() == ["alice", "bob"]  # sorted, as integer ids are
    assert in_order(sequences, 0) == ["sku-1", "7", "007"]  # "007" and "7" stay two items
    assert in_order(sequences, 1) == ["sku-1", "sku-9", "sku-3"]
    assert sequences.item_ids[0] is None and (sequences.item_raw_ids == -1).all()
    assert sequences.ratings is None  # no rating column: every row is an interaction


def test_parquet_datetimes_and_integer_ids(tmp_path: Path) -> None:
    path = tmp_path / "log.parquet"
    times = pd.to_datetime(["2023-05-02", "2023-05-01", "2023-05-03"]).tz_localize("Europe/Paris")
    pd.DataFrame({"user": [4, 4, 4], "item": [30, 10, 20], "timestamp": times,
                  "rating": [5.0, 4.0, 3.0]}).to_parquet(path)
    log = read_log("table", path)  # the default names, the rating column found by its name
    assert log.details["timestamps"] == "datetime" and log.details["user_ids"] == "integer"
    sequences = preprocess(log, LOOSE)
    assert in_order(sequences, 0) == [10, 30, 20]
    assert sequences.ratings.tolist() == [4.0, 5.0, 3.0]


@pytest.mark.parametrize(("name", "text", "options"), [
    ("log.tsv", "user\titem\ttimestamp\n1\t5\t2.5\n1\t6\t1.5\n", {}),  # tab from the suffix
    ("log.txt", "user;item;timestamp\n1;5;2.5\n1;6;1.5\n", {}),  # sniffed from the first line
    ("log.dat", "user|item|timestamp\n1|5|2.5\n1|6|1.5\n", {"sep": "pipe"}),  # named
    ("log.csv", "1,5,x,2.5\n1,6,y,1.5\n", {"header": False,  # positions, no header
                                           "columns": {"user": 0, "item": 1, "timestamp": 3}}),
])
def test_separators_headers_and_float_times(
        tmp_path: Path, name: str, text: str, options: dict) -> None:
    path = tmp_path / name
    path.write_text(text)
    log = read_log("table", path, **options)
    assert log.interactions[["user", "item"]].values.tolist() == [[1, 5], [1, 6]]
    assert log.details["timestamps"] == "float"
    assert log.interactions["timestamp"].tolist() == [2.5, 1.5]


def test_without_a_timestamp_column_file_order_is_time_order(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,rating,when\n1,30,4,3\n1,10,5,1\n1,20,3,2\n")
    log = read_log("table", path)  # no column named timestamp: found missing, no setting needed
    assert log.details["timestamps"] == "file order"
    assert in_order(preprocess(log, LOOSE), 0) == [30, 10, 20]
    timed = read_log("table", path, columns={"timestamp": "when"})
    assert in_order(preprocess(timed, LOOSE), 0) == [10, 20, 30]
    # An explicit null means file order even where a timestamp column exists.
    path.write_text("user,item,timestamp\n1,30,3\n1,10,1\n1,20,2\n")
    untimed = read_log("table", path, columns={"timestamp": None})
    assert in_order(preprocess(untimed, LOOSE), 0) == [30, 10, 20]


def test_movielens_reads_its_folder_or_a_file_in_it(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("".join(f"{u}\t{i}\t{1 + (u + i) % 5}\t{i}\n"
                                           for u in range(1, 4) for i in range(1, 6)))
    cache = tmp_path / "cache"
    by_folder = load_sequences(folder, "ml-100k", LOOSE, cache_dir=cache)
    by_file = load_sequences(folder / "u.data", "ml-100k", LOOSE, cache_dir=cache)
    assert torch.equal(by_folder.items, by_file.items)
    assert len(list(cache.glob("ml-100k-*.pt"))) == 1  # one log, one cache entry
    assert by_file.summary["path"] == str(folder)
    with pytest.raises(DataFormatError, match="has no u.data, which data.format=ml-100k reads"):
        load_sequences(tmp_path, "ml-100k", LOOSE)
    with pytest.raises(DataFormatError, match=r"data.format=table reads one file: set data.path="):
        load_sequences(folder, "table", LOOSE)


# -- ratings and duplicates: counted, reported, or refused naming the setting -------------------
def rated_log(tmp_path: Path, ratings: list[str], name: str = "log.csv") -> Path:
    """User 1 rates items 1..len(ratings) in time order, with these rating cells."""
    path = tmp_path / name
    rows = [f"1,{i + 1},{i},{r}" for i, r in enumerate(ratings)]
    path.write_text("user,item,timestamp,rating\n" + "\n".join(rows) + "\n")
    return path


def load(path: Path, **config) -> Sequences:
    return preprocess(read_log("table", path), PreprocessConfig(**{
        "min_user_interactions": 3, "min_item_interactions": 1, **config}))


def test_a_few_blank_ratings_are_dropped_never_all_ratings(tmp_path: Path) -> None:
    path = rated_log(tmp_path, ["4", "", "5", "NA", "3"])
    sequences = load(path)
    assert sequences.ratings.tolist() == [4.0, 5.0, 3.0]  # the rated rows keep their ratings
    summary = sequences.summary
    assert summary["ratings"]["blank"] == 2 and summary["ratings"]["used"]
    assert [s["interactions"] for s in summary["steps"]][:2] == [5, 3]
    assert any("2 row(s) with a blank rating dropped" in w for w in summary["warnings"])
    with pytest.raises(ValueError, match=r"2 blank rating\(s\), the first on data row 2: .*"
                       "set data.blank_ratings=drop"):
        load(path, blank_ratings="refuse")
    # A rating column with no rating at all: a log without ratings, said so.
    unrated = load(rated_log(tmp_path, ["", "", ""], "blank.csv"))
    assert unrated.ratings is None and not unrated.summary["ratings"]["used"]


@pytest.mark.parametrize(("ratings", "message"), [
    (["-1", "1", "1"], r"negative ratings \(they range from -1 to 1.*set data.rating_scale="
                       r"\[min, max\] to map them linearly onto 0-5 \(or data.columns.rating=null"),
    (["2", "10", "7"], r"ratings above 5 \(they range from 2 to 10.*set data.rating_scale="),
])
def test_ratings_off_the_simulators_scale_are_refused(
        tmp_path: Path, ratings: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load(rated_log(tmp_path, ratings))


def test_rating_scale_maps_the_logs_scale_onto_0_to_5(tmp_path: Path) -> None:
    path = rated_log(tmp_path, ["1", "10", "5.5", "8"])
    sequences = load(path, rating_scale=[1, 10], min_rating=5.5)  # min_rating: the log's units
    assert sequences.ratings.tolist() == [5.0, 2.5, pytest.approx(3.888889)]
    assert sequences.summary["ratings"]["rating_scale"] == [1.0, 10.0]
    assert sequences.summary["ratings"]["range"] == [1.0, 10.0]
    with pytest.raises(ValueError, match=r"range from 1 to 10, outside data.rating_scale=\[1, 5\]"):
        load(path, rating_scale=[1, 5])
    likes = load(rated_log(tmp_path, ["-1", "1", "1"], "likes.csv"), rating_scale=(-1, 1))
    assert likes.ratings.tolist() == [0.0, 5.0, 5.0]
    with pytest.raises(ValueError, match=r"data.rating_scale=\[5, 1\] needs min < max"):
        PreprocessConfig(rating_scale=[5, 1])


def test_duplicate_rows_keep_the_last_or_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    path.write_text("user,item,timestamp,rating\n1,1,0,2\n1,2,1,3\n1,1,0,4\n1,3,2,5\n")
    sequences = load(path)
    assert sequences.ratings.tolist() == [4.0, 3.0, 5.0]  # (1, 1, 0): its last row's rating
    assert sequences.summary["duplicates"] == {"found": 1, "rule": "keep_last"}
    with pytest.raises(ValueError, match=r"1 duplicate row\(s\) \(same user, item and time; e.g. "
                       r"user 1, item 1 on data row 1, again later\): set data.duplicates=keep_last"):
        load(path, duplicates="refuse")


# -- the data summary ---------------------------------------------------------------------------
def test_the_summary_counts_each_step_and_is_json(tmp_path: Path) -> None:
    config = PreprocessConfig(min_rating=4.0, min_user_interactions=3, min_item_interactions=2,
                              validation_user_fraction=0.0, test_user_fraction=0.5)
    summary = preprocess(hand_made_log(), config).summary
    counts = {s["step"]: (s["users"], s["items"], s["interactions"]) for s in summary["steps"]}
    assert counts == {"read": (3, 5, 10), "blank_ratings": (3, 5, 10), "duplicates": (3, 5, 10),
                      "min_rating": (3, 3, 8), "k_core": (2, 3, 6)}
    assert summary["split"] == {"training_users": 1, "validation_users": 0, "test_users": 1}
    assert summary["ratings"]["min_rating_applied"] and summary["ratings"]["range"] == [1.0, 5.0]
    assert json.loads(json.dumps(summary)) == summary  # results.json can hold it


def test_the_summary_is_logged_through_recrl_data(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="recrl.data"):
        load_sequences(rated_log(tmp_path, ["4", "", "5", "3"]), "table", LOOSE)
    text = caplog.text
    assert "data summary:" in text and "blank ratings: 1 (data.blank_ratings=drop)" in text
    assert "WARNING" in text and "1 row(s) with a blank rating dropped" in text


def test_every_setting_that_changes_the_data_is_in_the_cache_key(tmp_path: Path) -> None:
    path = rated_log(tmp_path, ["1", "2", "3", "2"])
    cache = tmp_path / "cache"

    def entries(config: PreprocessConfig = LOOSE, **options) -> int:
        load_sequences(path, "table", config, cache_dir=cache, **options)
        return len(list(cache.glob("*.pt")))

    assert entries() == 1
    # The same reading, asked for another way: the same entry.
    assert entries(sep="comma", header=True, columns={"user": "user", "rating": "rating"}) == 1
    assert entries(columns={"timestamp": None}) == 2
    for change in ({"rating_scale": (0, 10)}, {"blank_ratings": "refuse"},
                   {"duplicates": "refuse"}):
        before = len(list(cache.glob("*.pt")))
        assert entries(replace(LOOSE, **change)) == before + 1, change
    again = load_sequences(path, "table", replace(LOOSE, rating_scale=(0, 10)), cache_dir=cache)
    assert again.ratings.tolist() == [0.5, 1.0, 1.5, 1.0]  # a hit, with its summary
    assert again.summary["ratings"]["rating_scale"] == [0.0, 10.0]


@needs_ml100k
def test_movielens_100k_summary(tmp_path: Path) -> None:
    summary = load_sequences(ML100K, "ml-100k", PreprocessConfig(), cache_dir=tmp_path).summary
    steps = {s["step"]: (s["users"], s["items"], s["interactions"]) for s in summary["steps"]}
    assert steps["read"] == (943, 1_682, 100_000) and steps["k_core"] == (943, 1_349, 99_287)
    assert summary["ratings"]["range"] == [1.0, 5.0] and summary["ratings"]["blank"] == 0
    assert summary["duplicates"]["found"] == 0 and summary["warnings"] == []
    assert summary["split"] == {"training_users": 849, "validation_users": 47, "test_users": 47}


# -- bad files ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty"),
        ("1\t10\t5\t100\nabc\t20\t3\t100\n", "'user' must be integer, got 'abc'"),
        ("1\t10\t5\t100\n2\t20\n", "fewer than the 4 fields"),
    ],
)
def test_a_bad_movielens_file_names_the_file_and_the_problem(
    tmp_path: Path, content: str, message: str
) -> None:
    (tmp_path / "u.data").write_text(content)
    with pytest.raises(DataFormatError, match=message) as err:
        read_ml100k(tmp_path)
    assert str(tmp_path / "u.data") in str(err.value)


def test_a_table_without_the_named_columns_says_which_are_missing(tmp_path: Path) -> None:
    table = tmp_path / "log.csv"
    table.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(DataFormatError, match=r"columns 'user', 'item' not found \(columns: "
                       r"user_id, item_id\): set data.columns.user=<name> and data.columns.item"):
        read_log("table", table, user="user", item="item", timestamp=None, rating=None)


# -- downloads, from a local server --------------------------------------------------------------
@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served
    server.shutdown()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def build_archive(served: Path, source: Path, md5: str | None = None) -> bytes:
    """``ml-100k.zip`` of ``source``'s files under ``ml-100k/``, with GroupLens's .md5 beside it."""
    archive = served / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(source.iterdir()):
            zf.write(path, f"ml-100k/{path.name}")
    data = archive.read_bytes()
    (served / "ml-100k.zip.md5").write_text(
        f"MD5 (ml-100k.zip) = {md5 or hashlib.md5(data).hexdigest()}\n")
    return data


@pytest.mark.e2e
@needs_ml100k
def test_download_verifies_and_unpacks_from_a_local_server(
    local_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, served = local_server
    build_archive(served, ML100K)
    dest = tmp_path / "data"
    proc = run_process([sys.executable, "-m", "recrl.data", "download", "ml-100k", "--dest",
                        str(dest), "--base-url", url], timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (dest / "ml-100k" / "u.data").read_bytes() == (ML100K / "u.data").read_bytes()
    assert sorted(p.name for p in dest.iterdir()) == ["ml-100k"]  # no .part, no staging left
    assert read_ml100k(dest / "ml-100k").interactions["user"].nunique() == 943


def u_data_folder(folder: Path, rows: int) -> Path:
    """A folder holding a ``u.data`` of ``rows`` copies of one rating."""
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t1\n" * rows)
    return folder


def assert_download_fails_leaving_nothing(url: str, dest: Path, match: str) -> None:
    with pytest.raises(DownloadError, match=match):
        download("ml-100k", dest, base_url=url)
    assert list(dest.iterdir()) == []  # no partial file, no staging folder


def test_a_checksum_mismatch_leaves_nothing_behind(
    local_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, served = local_server
    build_archive(served, u_data_folder(tmp_path / "src", rows=1), md5="0" * 32)
    assert_download_fails_leaving_nothing(url, tmp_path / "data", "checksum mismatch")


def test_a_truncated_archive_is_reported_as_such(
    local_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, served = local_server
    data = build_archive(served, u_data_folder(tmp_path / "src", rows=1000))
    truncated = data[: len(data) // 2]
    (served / "ml-100k.zip").write_bytes(truncated)  # its published MD5 matches the cut file
    (served / "ml-100k.zip.md5").write_text(f"{hashlib.md5(truncated).hexdigest()}  ml-100k.zip\n")
    assert_download_fails_leaving_nothing(url, tmp_path / "data", "not a valid zip archive")
