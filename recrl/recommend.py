"""Batch recommendations: the top-k items for every user of an interaction log.

    python -m recrl.recommend <run folder> --data <log> --k 10 --out recs.parquet
    python -m recrl.recommend <run folder> --data my_log.csv --format table data.sep=';'

Each user's history is their last ``L`` items of the log that the run's catalogue knows, in time
order (file order without timestamps), read as the simulator reads a logged user's start
history; the trained policy scores the whole catalogue after it and the best ``k`` items the user
has not interacted with are written (``--include-seen`` keeps those). Users with no known item
get the run's most-popular items, flagged ``fallback``. Output: one row per user and rank with the
log's own user and item ids and the policy's score, as Parquet or CSV (by ``--out``'s suffix).
Users are scored in chunks, so a log of 100k users needs memory for one chunk of scores.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from recrl.data.formats import DataFormatError, read_log
from recrl.data.preprocess import DataConfig, to_simulator_scale
from recrl.inference import RunLoadError, TrainedPolicy, load_run
from recrl.observation import MAX_RATING

#: At most this many scores ([chunk, N+1] floats) are held at once.
SCORE_ELEMENTS_PER_CHUNK = 50_000_000


class RecommendError(ValueError):
    """Bad input to `recommend`: names the problem and the fix."""


def user_histories(policy: TrainedPolicy, log: pd.DataFrame, rating_scale: Any = None
                   ) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              int]:
    """Per user of ``log`` (columns user, item, timestamp, rating): the user ids (first
    appearance order), the last ``L`` known items ``[U, L]`` (internal ids, right-aligned), their
    watch times ``[U, L]`` (the rating on the simulator's scale, else the top of the scale), every
    known item of every user (for exclusion) as CSR: items ``[I]`` and offsets ``[U+1]``, and the
    count of interactions with unknown items."""
    index_of = policy.index_of()
    items = log["item"].map(index_of)
    unknown = int(items.isna().sum())
    frame = pd.DataFrame({"user": log["user"].to_numpy(), "item": items.fillna(0).astype("int64"),
                          "timestamp": log["timestamp"].to_numpy(), "order": np.arange(len(log))})
    if "rating" in log and log["rating"].notna().any():
        watch = to_simulator_scale(log["rating"].astype("float64"), rating_scale)
        frame["watch"] = watch.fillna(MAX_RATING).clip(0.0, MAX_RATING).to_numpy()
    else:
        frame["watch"] = MAX_RATING
    users = pd.unique(frame["user"])
    frame["row"] = pd.Categorical(frame["user"], categories=users).codes
    known = frame[frame["item"] > 0].sort_values(["row", "timestamp", "order"], kind="stable")
    L = policy.history_length
    # Position from the end of each user's known items: the last L are right-aligned.
    from_end = known.groupby("row").cumcount(ascending=False).to_numpy()
    keep = from_end < L
    history = torch.zeros(len(users), L, dtype=torch.int64)
    watch_time = torch.zeros(len(users), L, dtype=torch.float32)
    rows = torch.as_tensor(known["row"].to_numpy()[keep], dtype=torch.int64)
    cols = torch.as_tensor(L - 1 - from_end[keep], dtype=torch.int64)
    history[rows, cols] = torch.as_tensor(known["item"].to_numpy()[keep])
    watch_time[rows, cols] = torch.as_tensor(known["watch"].to_numpy()[keep], dtype=torch.float32)
    seen_items = torch.as_tensor(known["item"].to_numpy())  # [I], grouped by user (sorted)
    counts = torch.bincount(torch.as_tensor(known["row"].to_numpy(), dtype=torch.int64),
                            minlength=len(users))
    seen_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), counts.cumsum(0)])  # [U+1]
    return users, history, watch_time, seen_items, seen_offsets, unknown


def recommend(policy: TrainedPolicy, log: pd.DataFrame, k: int, *, exclude_seen: bool = True,
              rating_scale: Any = None, chunk_size: int | None = None,
              progress: bool = True) -> pd.DataFrame:
    """The top-``k`` recommendations of every user of ``log``: columns user, rank (1..k), item,
    score, fallback (the user had no known item: most-popular instead of the policy)."""
    N = policy.num_items
    if not isinstance(k, int) or k < 1:
        raise RecommendError(f"--k must be a positive integer, got {k!r}")
    if k > N:
        raise RecommendError(f"--k={k} is larger than the run's catalogue of {N} items")
    users, history, watch_time, seen_items, seen_offsets, unknown = user_histories(
        policy, log, rating_scale)
    if unknown:
        print(f"recrl.recommend: {unknown} of {len(log)} interactions name items the run does not "
              f"know; they are left out of the histories", file=sys.stderr)
    chunk_size = chunk_size or max(1, min(4096, SCORE_ELEMENTS_PER_CHUNK // (N + 1)))
    popular = policy.popularity.clone()
    popular[0] = float("-inf")
    out_items, out_scores, out_fallback = [], [], []
    starts = range(0, len(users), chunk_size)
    for start in tqdm(starts, desc="recommending", unit="chunk", disable=not progress):
        rows = slice(start, start + chunk_size)
        chunk_history = history[rows]
        cold = (chunk_history == 0).all(dim=1)  # [C]
        scores = policy.scores(chunk_history.to(policy.module.device),
                               watch_time[rows].to(policy.module.device)).float().cpu()
        scores = torch.where(cold[:, None], popular, scores)
        scores[:, 0] = float("-inf")
        if exclude_seen:
            offsets = seen_offsets[start : start + len(chunk_history) + 1]  # this chunk's CSR
            chunk_rows = torch.repeat_interleave(torch.arange(len(chunk_history)), offsets.diff())
            items = seen_items[offsets[0] : offsets[-1]]
            scores = scores.index_put((chunk_rows, items), torch.tensor(float("-inf")))
        top = scores.topk(k, dim=1)
        out_items.append(top.indices)
        out_scores.append(top.values)
        out_fallback.append(cold[:, None].expand(-1, k))
    items = torch.cat(out_items).numpy()  # [U, k]
    scores = torch.cat(out_scores).numpy()
    available = np.isfinite(scores)  # a user who has seen nearly everything gets fewer than k
    return pd.DataFrame({
        "user": np.repeat(users, k)[available.ravel()],
        "rank": np.tile(np.arange(1, k + 1), len(users))[available.ravel()],
        "item": policy.item_ids[items][available],
        "score": scores[available],
        "fallback": torch.cat(out_fallback).numpy()[available],
    })


def write_recommendations(frame: pd.DataFrame, out: Path) -> None:
    """Parquet for ``.parquet``, CSV for ``.csv``; written whole or not at all."""
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise RecommendError(f"--out must end in .parquet or .csv, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    if suffix == ".parquet":
        frame.to_parquet(partial, index=False)
    else:
        frame.to_csv(partial, index=False)
    partial.replace(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recrl.recommend",
        description="Top-k recommendations for every user of an interaction log, from a run folder.")
    parser.add_argument("run", type=Path, help="a finished run folder (outputs/<date>/<time>)")
    parser.add_argument("--data", required=True, help="the interaction log (file or folder)")
    parser.add_argument("--format", default=None,
                        help="its format (default: the run's data.format; ml-100k, table, ...)")
    parser.add_argument("--k", type=int, default=10, help="recommendations per user (10)")
    parser.add_argument("--out", type=Path, default=Path("recs.parquet"),
                        help="output file, .parquet or .csv (recs.parquet)")
    parser.add_argument("--include-seen", action="store_true",
                        help="also recommend items the user already has in the log")
    parser.add_argument("--checkpoint", default="policy", choices=["policy", "last"],
                        help="the weights the run's final evaluation played (policy) or its "
                             "latest training state (last)")
    parser.add_argument("--run-data", default=None,
                        help="where the run's own log is now, if it moved (its data.path)")
    parser.add_argument("overrides", nargs="*",
                        help="the log's read options as data.<key>=<value> (data.sep=';', "
                             "data.columns.user=uid, data.header=false)")
    return parser.parse_intermixed_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        policy = load_run(args.run, data_path=args.run_data, checkpoint=args.checkpoint)
        options = read_options(policy, args.format, args.overrides)
        raw = read_log(options.format, args.data, **options.read_options)
        frame = recommend(policy, raw.interactions, args.k, exclude_seen=not args.include_seen,
                          rating_scale=options.rating_scale)
        write_recommendations(frame, args.out)
    except (RunLoadError, RecommendError, DataFormatError, FileNotFoundError, ValueError) as error:
        raise SystemExit(f"recrl.recommend: {error}") from None
    print(f"{frame['user'].nunique()} users, {len(frame)} recommendations -> {args.out}")


def read_options(policy: TrainedPolicy, format: str | None, overrides: Sequence[str]) -> DataConfig:
    """How to read the log: the run's data settings, its format replaced by ``format`` and its
    read options by ``data.<key>=<value>`` overrides."""
    for item in overrides:
        if not item.startswith("data.") or "=" not in item:
            raise RecommendError(f"{item!r}: read options are data.<key>=<value> (e.g. data.sep=';')")
    data = OmegaConf.to_container(policy.cfg.data, resolve=True) if "data" in policy.cfg else {}
    data = {**data, "path": data.get("path") or "", "format": format or data.get("format") or "table"}
    if format is not None and format != policy.cfg.get("data", {}).get("format"):
        data.pop("columns", None)
    given = OmegaConf.to_container(OmegaConf.from_dotlist([o[len("data."):] for o in overrides]))
    return DataConfig.from_mapping({**data, **given})


if __name__ == "__main__":
    main()
