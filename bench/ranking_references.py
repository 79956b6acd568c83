"""Non-neural reference rankers on a logged dataset, under recrl's own ranking protocols.

How good can a next-item ranker get on a dataset? Before reading a pretrained encoder's HR@10
as good or bad, compare it with simple models that need no training loop, scored by exactly the
code (`recrl.ranking.evaluate_ranking`) and the inputs (the last ``L`` items before each user's
leave-one-out test item) that rank the pretrained encoder:

- ``most_popular``: training interaction counts (the baseline of every run's table);
- ``markov``: item-to-item transitions of the training sequences, ``i -> j`` counted when ``j``
  follows ``i`` within ``--reach`` positions (weight 1 / distance), each row normalised; a
  history scores ``sum_t decay^(L-1-t) P[h_t]`` (recent items count more), plus a little
  popularity to break ties;
- ``item_knn``: cosine similarity of items' user sets (training sequences), summed over the
  history: order-free co-occurrence;
- ``ease``: EASE (Steck 2019), the closed-form item-item linear autoencoder, a strong
  order-free collaborative-filtering model, applied to the set of history items (skipped above
  ``--ease-max-items`` items: it inverts an ``N x N`` matrix).

``--history-length 2000`` gives every ranker a user's whole prefix instead of the last ``L``
items (how much does a longer history help on this data?). ``--target valid`` ranks each user's
leave-one-out validation item (the one before the test item) instead: is one target harder than
the other for every ranker, or only for a trained encoder?

The statistics come from the leave-one-out training parts of all users, as most-popular's
counts do (no test or validation item is ever counted). The log, its preprocessing and ``L`` are
the env config's (Hydra overrides, as for ``python -m recrl.run``), so the references rank
exactly what a run on that env ranks. Prints a markdown table.

    python bench/ranking_references.py [--override env=ml100k]
    python bench/ranking_references.py --override env=logged data.path=<log> data.format=sequences
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch import Tensor

from recrl.data import Sequences
from recrl.ranking import ScoreFn, evaluate_ranking, most_popular_scorer, popularity_scores
from recrl.build import with_default_env

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides that choose the logged-data env (log, format, "
                             "preprocessing, env.history_length; env=ml100k unless one of "
                             "them chooses the env)")
    parser.add_argument("--history-length", type=int, default=None,
                        help="L (default: the env's history_length)")
    parser.add_argument("--target", choices=("test", "valid"), default="test",
                        help="the leave-one-out item to rank (the statistics never count either)")
    parser.add_argument("--reach", type=int, default=3, help="markov: farthest transition counted")
    parser.add_argument("--decay", type=float, default=0.8, help="markov: recency decay")
    parser.add_argument("--ease-lambda", type=float, default=500.0, help="ease: L2 penalty")
    parser.add_argument("--ease-max-items", type=int, default=20_000,
                        help="ease: skipped for larger catalogues (an N x N inverse)")
    return parser.parse_args()


def env_sequences(overrides: list[str]) -> tuple[Sequences, int, str]:
    """The sequences, ``L`` and log path of the env the overrides compose (one simulated user:
    what the env preprocesses is what is ranked; its taste model is fitted once, cached)."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    env = instantiate(cfg.env, num_users=1, seed=0)
    sequences = getattr(env, "sequences", None)
    if sequences is None:
        raise SystemExit(f"{type(env).__name__} has no logged sequences to rank; choose a "
                         "logged-data env (--override env=ml100k, env=beauty or env=logged ...)")
    return sequences, env.history_length, str(cfg.data.path)


def training_interactions(sequences: Sequences) -> tuple[Tensor, Tensor]:
    """The leave-one-out training items ``[I]`` and the user of each ``[I]``."""
    train_items, train_offsets, _, _ = sequences.leave_one_out()
    user_of = torch.repeat_interleave(torch.arange(train_offsets.numel() - 1),
                                      train_offsets[1:] - train_offsets[:-1])
    return train_items, user_of


def training_transitions(sequences: Sequences, reach: int) -> Tensor:
    """``[N+1, N+1]`` row-normalised counts of ``i -> j`` within ``reach`` steps (1 / distance)."""
    train_items, user_of = training_interactions(sequences)
    size = sequences.num_items + 1
    counts = torch.zeros(size, size)
    for distance in range(1, reach + 1):  # a handful of shifted views, no loop over users
        same_user = user_of[:-distance] == user_of[distance:]
        source, target = train_items[:-distance][same_user], train_items[distance:][same_user]
        counts.index_put_((source, target), torch.full_like(source, 1.0 / distance,
                                                            dtype=torch.float32),
                          accumulate=True)
    return counts / (counts.sum(1, keepdim=True) + 1.0)


def markov_scorer(sequences: Sequences, reach: int, decay: float) -> ScoreFn:
    transitions = training_transitions(sequences, reach)
    popularity = popularity_scores(sequences)
    tie_break = 1e-3 * popularity / popularity.max()

    def score_fn(history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        length = history.shape[1]
        weights = decay ** torch.arange(length - 1, -1, -1, dtype=torch.float32)  # [L]
        weights = weights * (history != 0)  # padding counts for nothing
        return torch.einsum("bl,bln->bn", weights, transitions[history]) + tie_break

    return score_fn


def training_user_item(sequences: Sequences) -> Tensor:
    """``[U, N+1]`` 0/1: which items each user interacted with in the training parts."""
    train_items, user_of = training_interactions(sequences)
    user_item = torch.zeros(sequences.num_users, sequences.num_items + 1)
    user_item[user_of, train_items] = 1.0
    return user_item


def item_knn_scorer(sequences: Sequences) -> ScoreFn:
    user_item = training_user_item(sequences)
    co_occurrence = user_item.T @ user_item
    counts = co_occurrence.diagonal().clone()
    similarity = co_occurrence / (counts.sqrt()[:, None] * counts.sqrt()[None, :] + 1e-9)
    similarity.fill_diagonal_(0.0)
    similarity[0] = 0.0  # padding

    def score_fn(history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        return similarity[history].sum(1)

    return score_fn


def ease_scorer(sequences: Sequences, penalty: float) -> ScoreFn:
    user_item = training_user_item(sequences)
    user_item[:, 0] = 0.0  # padding
    size = user_item.shape[1]
    gram = user_item.T @ user_item + penalty * torch.eye(size)
    inverse = torch.linalg.inv(gram.double())
    weights = (-inverse / inverse.diagonal()[None, :]).float()  # B = I - P diag(1 / diag(P))
    weights.fill_diagonal_(0.0)
    weights[0] = 0.0

    def score_fn(history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        seen = torch.zeros(history.shape[0], size).scatter_(1, history, 1.0)
        seen[:, 0] = 0.0
        return seen @ weights

    return score_fn


def main() -> None:
    args = parse_args()
    sequences, env_history_length, data = env_sequences(with_default_env(args.override))
    history_length = args.history_length or env_history_length
    scorers = {
        "most_popular": most_popular_scorer(sequences),
        "markov": markov_scorer(sequences, args.reach, args.decay),
        "item_knn": item_knn_scorer(sequences),
    }
    if sequences.num_items <= args.ease_max_items:
        scorers["ease"] = ease_scorer(sequences, args.ease_lambda)
    results = {name: evaluate_ranking(fn, sequences, history_length=history_length,
                                      target=args.target, ks=(10,))
               for name, fn in scorers.items()}
    protocols = list(results["most_popular"])
    print(f"{data}: {sequences.num_users} users, {sequences.num_items} items, "
          f"L = {history_length}, {args.target} item; "
          "HR@10 / NDCG@10 (x most-popular's HR@10)\n")
    print("| ranker | " + " | ".join(protocols) + " |")
    print("|---|" + "---:|" * len(protocols))
    for name, result in results.items():
        cells = []
        for protocol in protocols:
            hr, ndcg = result[protocol]["HR@10"], result[protocol]["NDCG@10"]
            ratio = hr / results["most_popular"][protocol]["HR@10"]
            cells.append(f"{hr:.4f} / {ndcg:.4f} ({ratio:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
