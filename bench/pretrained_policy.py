"""A pretrained head as a policy, before any RL: how far does the log alone get in the simulator?

``encoder.init_from`` starts an RL policy's item scorer from a pretraining head
(``encoder.init_scorer``: ``rating`` or ``next_item``). This plays that starting policy on the
simulator's held-out test users (the final evaluation's users and seed), greedily and sampled
from ``softmax(scale * scores)`` at several scales, next to a uniformly random policy. If the
head's policy is already good, RL from it starts ahead; if it is worse than random, the log does
not hold what the simulator rewards (on ``env=ml100k``: diversity; users leave when
recommendations come too close to the last few), and pretraining can only help RL learn which
items users like, not what to do about it.

    python bench/pretrained_policy.py <pretraining run>/checkpoints/last.ckpt \
        [--scales 1 2 4 8] [--users 500] [--override env=ml100k encoder.init_scorer=next_item ...]

The encoder's attention (``encoder.causal``) follows the checkpoint's objective.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

from recrl.observation import HISTORY_KEYS
from recrl.baselines import RandomRecommender
from recrl.encoders.pretrained import pretraining_objective
from recrl.evaluation import evaluate_policy
from recrl.build import build_module, with_default_env

REPO = Path(__file__).resolve().parent.parent


class HeadPolicy(TensorDictModuleBase):
    """The greedy item (``scale=None``) or a sample of ``softmax(scale * scores)`` over the items
    the environment allows, by a module's encoder and a pretrained item scorer."""

    in_keys = [*HISTORY_KEYS, "action_mask"]
    out_keys = ["action"]

    def __init__(self, encoder, scorer, scale: float | None, seed: int = 0) -> None:
        super().__init__()
        self.encoder, self.scorer, self.scale = encoder, scorer, scale
        self.generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        scores = self.scorer(self.encoder(*(tensordict[key] for key in HISTORY_KEYS)))
        scores = torch.where(tensordict["action_mask"], scores, float("-inf"))
        if self.scale is None:
            return tensordict.set("action", scores.argmax(-1))
        probabilities = torch.softmax(self.scale * scores, dim=-1)
        action = torch.multinomial(probabilities, 1, generator=self.generator).squeeze(-1)
        return tensordict.set("action", action)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="an algo=pretrain run's checkpoint")
    parser.add_argument("--scales", type=float, nargs="*", default=[1.0, 2.0, 4.0, 8.0])
    parser.add_argument("--users", type=int, default=500, help="held-out test users")
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides of the RL run (env, encoder.init_scorer, ...; "
                             "env=ml100k unless one of them chooses the env)")
    args = parser.parse_args()
    args.override = with_default_env(args.override)
    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    causal = pretraining_objective(saved) == "causal"
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["algo=ppo", f"encoder.init_from={args.checkpoint}",
                                           f"encoder.causal={str(causal).lower()}",
                                           *args.override])
    module, _ = build_module(cfg)  # PPO's policy scorer starts from the pretrained head
    module.eval()
    scorer = module.policy_head.module[0].module
    policies = {"random": RandomRecommender(seed=cfg.evaluation.seed),
                "head, greedy": HeadPolicy(module.encoder, scorer, None)}
    policies.update({f"head, sampled at scale {s:g}": HeadPolicy(module.encoder, scorer, s)
                     for s in args.scales})
    print(f"{args.checkpoint} (head: {module.encoder.pretrained_scorer_head}), {args.users} "
          f"held-out test users (seed {cfg.evaluation.seed}):\n")
    print("| policy | return | episode length |\n|---|---:|---:|")
    for name, policy in policies.items():
        env = module.make_env(args.users, seed=cfg.evaluation.seed, split="test")
        result = evaluate_policy(env, policy, cfg.evaluation.max_steps)
        print(f"| {name} | {result['return_mean']:.1f} ± {result['return_ci95']:.1f} | "
              f"{result['episode_length']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
