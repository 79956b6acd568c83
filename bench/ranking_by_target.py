"""A pretraining checkpoint's full-ranking HR@10 on each leave-one-out target, by user group.

Every run reports HR@10 on the *test* item (each user's last). This script also ranks the
*validation* item (the one before it) and splits the users into those the pretraining trained
on and the simulator's held-out users, next to most-popular on the same items. It answers two
questions the single test number cannot: is the test item harder than the validation item,
and do the users pretraining trained on score otherwise than held-out users it never saw?

    python bench/ranking_by_target.py <pretraining run>/checkpoints/last.ckpt [...] \
        [--override env=ml100k encoder=bert_tiny]

The overrides must rebuild the pretraining run's env, encoder and heads (``env=ml100k`` unless
one of them chooses the env; an ``encoder=bert_text`` run wants ``encoder=bert_text``, a run
without the rating head ``algo.rating_weight=0``). Each checkpoint's
objective (cloze or causal, with the encoder attention it needs) is read from the checkpoint.
A checkpoint of ``algo.train_on_validation_item=true`` trained on the trained users' validation
items: those cells say "(trained on)" instead of a number.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from recrl.encoders.pretrained import pretraining_objective
from recrl.ranking import evaluate_ranking, most_popular_scorer
from recrl.build import build_module, with_default_env

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("valid", "test")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="algo=pretrain checkpoints")
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides that rebuild the pretraining run's env and encoder "
                             "(env=ml100k unless one of them chooses the env)")
    args = parser.parse_args()
    args.override = with_default_env(args.override)
    modules = {}  # one module per objective; each checkpoint's weights are loaded into its own

    def module_for(objective: str):
        if objective not in modules:
            overrides = ["algo=pretrain", f"algo.objective={objective}",
                         f"encoder.causal={str(objective == 'causal').lower()}", *args.override]
            with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
                modules[objective] = build_module(compose("config", overrides=overrides))[0]
            modules[objective].eval()
        return modules[objective]

    saved = {checkpoint: torch.load(checkpoint, map_location="cpu", weights_only=True)
             for checkpoint in args.checkpoints}
    objective = {checkpoint: pretraining_objective(state) for checkpoint, state in saved.items()}
    first = module_for(objective[args.checkpoints[0]])  # the log and the window: the same for all
    sequences, history_length = first.sequences, first.encoder.history_length
    heldout = sequences.heldout_users
    groups = {
        f"all {sequences.num_users}": torch.arange(sequences.num_users),
        f"trained on ({int((~heldout).sum())})": torch.nonzero(~heldout).squeeze(1),
        f"held out ({int(heldout.sum())})": torch.nonzero(heldout).squeeze(1),
    }

    def hit_rate(score_fn, target: str, users: torch.Tensor) -> float:
        with torch.no_grad():
            return evaluate_ranking(score_fn, sequences, history_length=history_length,
                                    target=target, users=users, ks=(10,),
                                    protocols=("full",))["full"]["HR@10"]

    popular = most_popular_scorer(sequences)  # the same for every checkpoint: ranked once
    popular_hr = {(group, target): hit_rate(popular, target, users)
                  for group, users in groups.items() for target in TARGETS}
    print("Full-ranking HR@10 (most-popular's beside it, and the ratio), leave-one-out "
          "validation and test items\n")
    print("| checkpoint | users | " + " | ".join(f"{t} item" for t in TARGETS) + " |")
    print("|---|---|" + "---:|" * len(TARGETS))
    for checkpoint in args.checkpoints:
        module = module_for(objective[checkpoint])
        module.load_state_dict(saved[checkpoint]["state_dict"])
        # algo.train_on_validation_item: the trained users' validation items were training data.
        trained_on_valid = saved[checkpoint].get("hyper_parameters", {}).get(
            "train_on_validation_item", False)
        for group, users in groups.items():
            cells = []
            for target in TARGETS:
                if target == "valid" and trained_on_valid and not group.startswith("held out"):
                    cells.append("(trained on)")
                    continue
                model, base = hit_rate(module.item_scores, target, users), popular_hr[group, target]
                cells.append(f"{model:.3f} / {base:.3f} ({model / base:.2f}x)")
            print(f"| {checkpoint} | {group} | " + " | ".join(cells) + " |", flush=True)

if __name__ == "__main__":
    main()
