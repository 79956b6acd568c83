"""A most-popular baseline that does not move with the agent, and finished runs' agents against it.

A run's ``popular`` baseline ranks the items the agent's own exploration got clicked during
training, so it rises and falls with the agent (a worse explorer makes it weaker). This one is
fixed: items ranked by their clicks under *uniformly random* recommendations to the simulator's
training users, for ``--frames`` frames. It is played on the final evaluation's test users (the
same seed, so the same users), and every run folder given is compared with it user by user
(``test_returns.json``), next to the run's own ``popular``.

    python bench/fixed_popular.py <run folder> [<run folder> ...] \
        [--frames 194048 1000000] [--override env=ml100k ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from recrl.baselines import MostPopularRecommender
from recrl.compare import differing_population, read_test_returns
from recrl.envs import uniform_valid_action
from recrl.evaluation import paired_gap, play_users, summarise
from recrl.build import build_module
from recrl.results import evaluation_population

REPO = Path(__file__).resolve().parent.parent
#: Users stepped at once while counting clicks (any number gives the same kind of counts).
NUM_USERS = 256


def random_exposure_clicks(module, num_items: int, frames: int, seed: int) -> torch.Tensor:
    """Clicks per item ([N+1]) when training users get uniformly random allowed items."""
    env = module.make_env(NUM_USERS, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    clicks = torch.zeros(num_items + 1)
    td = env.reset()
    for _ in range(frames // NUM_USERS):
        td["action"] = uniform_valid_action(td["action_mask"], generator)
        td, next_td = env.step_and_maybe_reset(td)
        clicked = td["action"][td["next", "click"]]
        clicks += torch.bincount(clicked, minlength=num_items + 1).float()
        td = next_td
    return clicks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders with a test_returns.json")
    parser.add_argument("--frames", type=int, nargs="+", default=[194_048, 1_000_000],
                        help="random-exposure frames (194,048: the env=ml100k DQN default's)")
    parser.add_argument("--override", nargs="*", default=["env=ml100k"],
                        help="config overrides; the env must be the runs' env")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the random exposure")
    args = parser.parse_args()

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=args.override)
    module, probe_env = build_module(cfg)
    population = evaluation_population(cfg)
    runs = {}
    for run in args.runs:
        saved = read_test_returns(Path(run))
        differing = differing_population(saved["population"], population)
        if differing:  # a user-by-user gap needs the same users in the same order
            raise SystemExit(f"{run} met other test users than this evaluation (their "
                             f"{', '.join(differing)} differ): give the run's env and "
                             "evaluation settings with --override")
        runs[run] = saved["returns"]
    print(f"| random-exposure frames | fixed popular | {' | '.join(runs)} |")
    print(f"|---:|---:|{'---:|' * len(runs)}")
    for frames in args.frames:
        clicks = random_exposure_clicks(module, probe_env.num_items, frames, args.seed)
        episodes = play_users(
            lambda n, s: module.make_env(n, seed=s, split="test"),
            lambda env: MostPopularRecommender(clicks),
            num_users=cfg.evaluation.final_num_users, seed=cfg.evaluation.seed,
            max_steps=cfg.evaluation.max_steps,
        )
        summary = summarise(episodes)
        gaps = []
        for returns in runs.values():
            agent = torch.tensor(returns["agent"], dtype=torch.float64)
            mean, ci95 = paired_gap(agent, episodes.returns)
            gaps.append(f"{mean:+.1f} ± {ci95:.1f}")
        print(f"| {frames:,} | {summary['return_mean']:.1f} ± {summary['return_ci95']:.1f} | "
              f"{' | '.join(gaps)} |")


if __name__ == "__main__":
    main()
