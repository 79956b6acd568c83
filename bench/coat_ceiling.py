"""How high can a policy trained in Coat's learnt world score in the true one? Exact references.

EasyRL4Rec's protocol trains agents in a world learnt from the logged (self-selected) ratings and
tests them in RL4Rec's pseudo-ground-truth world. Whatever an agent learns, it learns the learnt
world's preferences; this script measures what that costs, with no RL in the way. Each reference
is a fixed rule played in the *true* world (true rewards, true quit rule, 30 turns, from every
user), recommending at each turn the best-scored item that does not make the user leave:

- ``truth, per user``: scores = the user's own true ratings (a quit-aware oracle; the ceiling);
- ``truth, same list for all``: scores = the true mean rating of each item (the best list that
  ignores who the user is; recrl's agents see no user id, only the session);
- ``learnt, per user`` / ``learnt, same list for all``: the same with the learnt world's ratings
  (what a perfect agent of the learnt world would do, judged in the true world).

The quit rule is applied greedily (skip any item within ``leave_threshold`` of the last
``leave_window`` recommendations), so the users never leave: every list lasts 30 turns.

    python bench/coat_ceiling.py [--override env.fit_weight_decay=1.0 ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from torch import Tensor

from recrl.envs.coat import load_coat_world

CONF = Path(__file__).resolve().parents[1] / "conf"


def greedy_lists(scores: Tensor, distance: Tensor, threshold: float, window: int,
                 turns: int) -> Tensor:
    """For every row of ``scores`` [R, N], the ``turns`` items [R, T] picked greedily: the best
    item not within ``threshold`` of the last ``window`` picks (all rows at once)."""
    rows = scores.shape[0]
    picks = torch.zeros(rows, 0, dtype=torch.long)
    for _ in range(turns):
        recent = picks[:, -window:]  # [R, <=W]
        if recent.shape[1]:
            near = (distance[recent] < threshold).any(dim=1)  # [R, N]
        else:
            near = torch.zeros_like(scores, dtype=torch.bool)
        choice = scores.masked_fill(near, float("-inf")).argmax(dim=1)
        picks = torch.cat([picks, choice[:, None]], dim=1)
    return picks


def true_return(truth: Tensor, picks: Tensor) -> Tensor:
    """Each user's return in the true world for lists ``picks`` ([U, T], or [1, T] for all)."""
    picks = picks.expand(truth.shape[0], -1)
    return truth.gather(1, picks).sum(dim=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--override", nargs="*", default=[], help="env.* overrides (Hydra)")
    args = parser.parse_args(argv)
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        env = compose("config", overrides=["env=coat", *args.override]).env
    world = load_coat_world(str(env.path), env.fit_dim, env.fit_weight_decay, env.fit_epochs,
                            env.ips, env.category_feature)
    truth, learnt = world.true_ratings, world.learnt_ratings
    rule = dict(distance=world.distance, threshold=env.leave_threshold, window=env.leave_window,
                turns=env.max_episode_steps)
    rows = []
    for name, scores in (("truth", truth), ("learnt", learnt)):
        for who, table in (("per user", scores), ("same list for all", scores.mean(0, keepdim=True))):
            returns = true_return(truth, greedy_lists(table, **rule))
            half = 1.96 * returns.std().item() / returns.numel() ** 0.5
            rows.append((f"{name}, {who}", returns.mean().item(), half))
    print(f"Coat, true world, {truth.shape[0]} users, {env.max_episode_steps} turns, quit rule "
          f"{env.leave_threshold} / {env.leave_window}; learnt world: "
          f"{'IPS' if env.ips else 'naive'} MF dim {env.fit_dim}, L2 {env.fit_weight_decay}\n")
    print("| scores the list follows | return in the true world (± 95% CI over users) |")
    print("|---|---:|")
    for name, mean, half in rows:
        print(f"| {name} | {mean:.2f} ± {half:.2f} |")


if __name__ == "__main__":
    main()
