"""What a run reports when training ends: the final evaluation, ``results.json``, its tables.

A module says which results it has (`PolicyModule.final_results`): a policy is played on the
held-out test users beside every baseline (`policy_results`; on logged data its rankings of the
test items too); pretraining ranks the test items (`pretraining_results`). Either way the weights
are first chosen by validation (``evaluation.select``), never by the test users.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from recrl.baselines import MostPopularRecommender, MyopicOracle, RandomRecommender
from recrl.callbacks import EveryNSteps, PeriodicEvaluation, RankingValidation
from recrl.data import Sequences
from recrl.evaluation import (
    ITEM_METRICS, SLATE_METRICS, Episodes, paired_gap, play_users, popularity_reference,
    summarise,
)
from recrl.plotting import plot_evaluation_curve
from recrl.ranking import describe_protocol, evaluate_ranking, log_popularity, most_popular_scorer
from recrl.run_folder import (
    BEST_CHECKPOINT, EVALUATION_PLOT, LAST_CHECKPOINT, POLICY_WEIGHTS, TEST_RETURNS_FILE,
    checkpoint_path,
)


class FinishedRun(NamedTuple):
    """What the final results of a run are computed from."""

    cfg: DictConfig
    trainer: L.Trainer
    validation: EveryNSteps  # the module's validation callback, with its curve and best point
    sequences: Sequences | None  # the log behind a logged-data env, else None
    output_dir: Path
    title: str  # "<algo> on <env>", for plots


class RunResults(NamedTuple):
    """``results.json``'s content and the files written with it (never without it)."""

    results: dict[str, Any]
    side_files: dict[str, dict[str, Any]]  # file name in the run folder -> JSON content


def policy_results(module: Any, run: FinishedRun) -> RunResults | None:
    """The greedy policy and every baseline on the held-out test users (`final_evaluation`),
    every user's return (``test_returns.json``, what ``recrl.compare`` pairs runs with), the
    evaluation plot and, on logged data, the offline rankings. Every process takes part (rank 0
    plays the test users); None on all but rank 0."""
    cfg = run.cfg
    results, returns = final_evaluation(module, cfg, run.sequences, run.validation)
    if not run.trainer.is_global_zero:
        return None
    save_policy_weights(module, checkpoint_path(run.output_dir, POLICY_WEIGHTS))
    test_returns = {"population": evaluation_population(cfg), "returns": returns}
    results.update(module.progress())
    results["evaluation_protocol"] = evaluation_protocol(cfg, run.sequences,
                                                        results["agent"]["num_users"])
    if run.sequences is not None:
        results["users"] = {split: int(run.sequences.users_of(split).numel())
                            for split in ("train", "validation", "test")}
        if run.sequences.summary is not None:  # what was read, kept and decided (recrl.data)
            results["data"] = run.sequences.summary
    if run.sequences is not None:
        results["offline_ranking"] = offline_ranking(module, run.sequences, cfg)
    plot_evaluation_curve(run.validation.curve, results["baselines"],
                          run.output_dir / EVALUATION_PLOT, title=run.title)
    return RunResults(results, {TEST_RETURNS_FILE: test_returns})


def save_policy_weights(module: Any, path: Path) -> None:
    """The weights the final evaluation played (``evaluation.select``'s), as a plain state dict
    on the CPU, written whole or not at all: what `recrl.inference.load_run` serves."""
    state = {key: value.detach().cpu() for key, value in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    os.replace(partial, path)


def evaluation_protocol(cfg: DictConfig, sequences: Sequences | None, num_test: int) -> str:
    """How the final numbers were measured, in words (``results.json``)."""
    evaluation = cfg.evaluation
    if sequences is None:  # a simulator of fresh users: every draw is a new user
        test = f"{num_test} fresh test users (seed {evaluation.seed})"
        validation = f"{evaluation.num_users} fresh validation users (seed {evaluation.val_seed})"
        ci = "users"
    else:  # a log's users: the test and validation users are distinct users, each met once
        num_validation = min(evaluation.num_users, int(sequences.users_of("validation").numel()))
        test = (f"{num_test} of the log's {int(sequences.users_of('test').numel())} test users "
                f"(seed {evaluation.seed}), each once")
        validation = (f"{num_validation} of its "
                      f"{int(sequences.users_of('validation').numel())} validation users "
                      f"(seed {evaluation.val_seed})")
        ci = "distinct users (a logged user's greedy episode is deterministic)"
    return (f"online, simulator, {test}, one episode each, greedy policy with the "
            f"{evaluation.select} weights by the return of {validation}; ± is a 95% CI over {ci}")


def pretraining_results(module: Any, run: FinishedRun) -> RunResults | None:
    """The pretrained encoder's rankings of the test items, with the weights validation chose
    (saved to ``checkpoints/best.ckpt`` with ``evaluation.select=best``: the file for
    ``encoder.init_from``; ``last.ckpt`` stays the final state that ``ckpt_path=last`` resumes).
    Every process takes part (the save is collective); None on all but rank 0."""
    cfg, trainer = run.cfg, run.trainer
    validation = select_pretrained_weights(module, run.validation, cfg.evaluation.select)
    checkpoint = checkpoint_path(run.output_dir, LAST_CHECKPOINT)
    if cfg.evaluation.select == "best":
        checkpoint = checkpoint_path(run.output_dir, BEST_CHECKPOINT)
        trainer.save_checkpoint(checkpoint, weights_only=True)
    if not trainer.is_global_zero:
        return None
    results = {"offline_ranking": offline_ranking(module, run.sequences, cfg),
               "selected_weights": {"rule": cfg.evaluation.select,
                                    "step": int(validation["step"])},
               "validation": validation,
               "checkpoint": str(checkpoint)}
    if run.sequences.summary is not None:
        results["data"] = run.sequences.summary
    return RunResults(results, {})


def results_tables(results: dict[str, Any]) -> list[str]:
    """The tables printed at the end of a run: the policies' returns, the rankings."""
    tables = []
    if "agent" in results:
        tables.append(format_results_table(results))
    if "offline_ranking" in results:
        tables.append(format_ranking_table(results["offline_ranking"]))
    return tables


def optimized_metric(results: dict[str, Any], path: str) -> float:
    """The value at ``path`` ("selected_weights.val_return") of ``results``: what a sweeper
    (Optuna) maximises, named by the algorithm's config (``algo.optimized_metric``)."""
    value: Any = results
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(f"algo.optimized_metric={path!r}: results.json has no {key!r} there")
        value = value[key]
    return float(value)


def select_weights(module: Any, evaluation: PeriodicEvaluation, select: str) -> dict[str, Any]:
    """Loads the weights ``evaluation.select`` asks for into ``module`` and says which they are:
    ``last`` keeps the final weights, ``best`` loads those with the highest validation return
    (the validation users are not the test users, so the test numbers stay unbiased), and the
    click counts of that step, which ``popular`` ranks: the same frames as the agent's."""
    if select == "best" and evaluation.best is not None:
        point = evaluation.best["point"]
        module.restore_selection(evaluation.best)
    else:
        point = evaluation.curve[-1]
    return {"rule": select, "step": int(point["step"]),
            **{key: int(point[key]) for key in module.progress()},
            "val_return": point["return_mean"], "val_return_ci95": point["return_ci95"]}


def select_pretrained_weights(module: Any, evaluation: RankingValidation, select: str
                              ) -> dict[str, float]:
    """Loads the pretrained weights ``evaluation.select`` asks for into ``module`` and returns
    their validation point: ``last`` keeps the final weights, ``best`` loads those with the
    highest HR@10 on the validation items (never the test items the final rankings measure)."""
    if select == "best" and evaluation.best is not None:
        module.load_state_dict(evaluation.best["weights"])
        return evaluation.best["point"]
    return evaluation.curve[-1]


def final_evaluation(module: Any, cfg: DictConfig, sequences: Sequences | None,
                     evaluation: PeriodicEvaluation
                     ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The greedy agent and every baseline on the same held-out test users: their summaries, and
    every user's return under each (for ``test_returns.json``).

    The agent runs with the weights ``evaluation.select`` chooses; when that is ``best``, the
    final weights are evaluated too (``agent_last``), so the effect of the choice is on record.
    ``popular`` ranks items by the clicks they got during training up to the selected weights'
    step (any simulator); on logged data ``popular_log`` ranks them by the training users'
    interactions in the log, the usual most-popular of recommender-systems papers.

    Every baseline also records ``agent_gap_mean`` / ``agent_gap_ci95``: the agent's return minus
    the baseline's, user by user (`paired_gap`; both played the same users), the test of "the
    agent beats this baseline" that the two separate return intervals are too wide for.
    """
    num_users, seed = cfg.evaluation.final_num_users, cfg.evaluation.seed
    test_env = module.make_env(1, seed=seed, split="test")
    # One popularity for every policy's novelty: the whole training's clicks, taken before
    # evaluation.select=best rolls them back to the selected step (where the env has no log).
    clicks = module.training_popularity()
    clicks = None if clicks is None else clicks.detach().to("cpu", copy=True)

    def play(policy_for_env) -> tuple[Episodes, dict[str, Any]]:
        # Under DDP process 0 plays the users and sends the episodes on (call on every process).
        episodes = play_users(
            lambda n, s: module.make_env(n, seed=s, split="test"), policy_for_env,
            num_users=num_users, seed=seed, max_steps=cfg.evaluation.max_steps,
            training_popularity=clicks,
        )
        return episodes, summarise(episodes)

    module.eval()
    results: dict[str, Any] = {"popularity_reference": popularity_reference(test_env, clicks)[1]}
    returns: dict[str, list[float]] = {}
    if cfg.evaluation.select == "best":
        last_episodes, results["agent_last"] = play(lambda env: module.greedy_policy)
        returns["agent_last"] = last_episodes.returns.tolist()
    selected = select_weights(module, evaluation, cfg.evaluation.select)
    agent_episodes, agent = play(lambda env: module.greedy_policy)
    returns["agent"] = agent_episodes.returns.tolist()
    played = {
        "random": play(lambda env: RandomRecommender(seed=seed, slate_size=env.slate_size)),
    }
    popularity = module.training_popularity()
    if popularity is not None:  # the clicks the module saw while training
        played["popular"] = play(lambda env: MostPopularRecommender(popularity, env.slate_size))
    if sequences is not None:
        counts = log_popularity(sequences, users=~sequences.heldout_users)
        played["popular_log"] = play(lambda env: MostPopularRecommender(counts, env.slate_size))
    if test_env.has_expected_reward:  # only simulators with hidden state
        played["oracle_myopic"] = play(MyopicOracle)
    baselines = {}
    for name, (episodes, summary) in played.items():
        gap_mean, gap_ci95 = paired_gap(agent_episodes.returns, episodes.returns)
        baselines[name] = {**summary, "agent_gap_mean": gap_mean, "agent_gap_ci95": gap_ci95}
        returns[name] = episodes.returns.tolist()
    results = {"agent": agent, **results, "selected_weights": selected, "baselines": baselines}
    return results, returns


def evaluation_population(cfg: DictConfig) -> dict[str, Any]:
    """What decides which test users a run's final evaluation meets: two runs with equal
    populations played the same users in the same order (`recrl.compare` checks it), whatever
    number of processes each ran on (`recrl.evaluation.play_users`)."""
    env = OmegaConf.to_container(cfg.env, resolve=True)
    # A logged-data env's log settings, flat beside the simulator's (the layout every earlier
    # run recorded, so their test_returns.json still pair with new ones).
    env.update(env.pop("data", {}))
    env.pop("cache_dir", None)  # where preprocessed data is cached changes no user
    return {"env": env,
            "seed": cfg.evaluation.seed, "num_users": cfg.evaluation.final_num_users}


def format_results_table(results: dict[str, Any]) -> str:
    """A plain-text table of the agent next to the baselines; ``agent - this`` is the paired
    per-user gap of the agent's return over each baseline's. Under it, how each policy's
    recommendations spread over the catalogue (`recrl.evaluation.summarise`), "—" for a metric
    this env cannot provide (no item vectors, no categories, no popularity) or that is undefined
    (NaN)."""
    rows = [("agent", results["agent"])]
    if "agent_last" in results:
        rows.append(("agent (last)", results["agent_last"]))
    rows += results["baselines"].items()
    lines = [
        f"{'policy':<14}{'return':>18}{'clicks':>16}{'CTR':>8}{'length':>16}"
        f"{'agent - this':>18}",
    ]
    for name, m in rows:
        lines.append(
            f"{name:<14}"
            f"{m['return_mean']:>10.1f} ± {m['return_ci95']:<5.1f}"
            f"{m['clicks_mean']:>8.1f} ± {m['clicks_ci95']:<5.1f}"
            f"{m['ctr']:>8.3f}"
            f"{m['episode_length']:>8.1f} ± {m['episode_length_ci95']:<5.1f}"
            + (f"{m['agent_gap_mean']:>+10.1f} ± {m['agent_gap_ci95']:<5.1f}"
               if "agent_gap_mean" in m else "")
        )
    widths = {key: max(len(header), 6) + 2 for key, header in ITEM_METRICS.items()}
    lines += ["", f"{'policy':<14}" + "".join(f"{header:>{widths[key]}}"
                                              for key, header in ITEM_METRICS.items())]
    for name, m in rows:
        lines.append(f"{name:<14}" + "".join(f"{item_metric_cell(m.get(key)):>{widths[key]}}"
                                             for key in ITEM_METRICS))
    if "slate_size" in results["agent"]:
        lines += ["", format_slate_table(rows)]
    return "\n".join(lines)


def format_slate_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """The list metrics of slates: clicks per slate, the share of clicks at each position,
    slate NDCG against the simulator's true preferences, diversity inside a slate."""
    lines = [f"{'policy':<14}{'clicks/slate':>14}"
             + "".join(f"{header:>12}" for header in SLATE_METRICS.values())
             + "   clicks by position"]
    for name, m in rows:
        positions = " ".join(f"{share:.2f}" for share in m["click_positions"])
        lines.append(f"{name:<14}{m['ctr']:>14.3f}"
                     + "".join(f"{item_metric_cell(m.get(key)):>12}" for key in SLATE_METRICS)
                     + f"   {positions}")
    return "\n".join(lines)


def item_metric_cell(value: float | None) -> str:
    """An item metric for the table: 3 decimals, "—" when absent or NaN."""
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.3f}"


def write_json_atomically(path: Path, data: dict[str, Any]) -> None:
    """A reader never sees a half-written file: write beside it, then rename."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def offline_ranking(module: Any, sequences: Sequences, cfg: DictConfig) -> dict[str, Any]:
    """HR@K / NDCG@K of the trained model and of most-popular on the leave-one-out test items."""
    options = cfg.evaluation.ranking
    users = torch.arange(sequences.num_users)
    described = f"all {sequences.num_users} users"
    if options.max_users is not None and options.max_users < sequences.num_users:
        generator = torch.Generator().manual_seed(options.seed)
        users = torch.randperm(sequences.num_users, generator=generator)[: options.max_users]
        users = users.sort().values
        described = f"{options.max_users} of {sequences.num_users} users (seed {options.seed})"

    def rank(score_fn) -> dict[str, dict[str, float]]:
        return evaluate_ranking(
            score_fn, sequences, history_length=module.encoder.history_length, users=users,
            ks=tuple(options.ks), num_negatives=options.num_negatives, seed=options.seed,
            chunk_size=options.chunk_size, device=module.device,
        )

    module.eval()
    scores = {"agent": rank(module.item_scores), "popular": rank(most_popular_scorer(sequences))}
    protocols = {key: describe_protocol(key) for key in scores["agent"]}
    return {**scores, "protocols": protocols, "users": f"{described}, leave-one-out test item"}


def format_ranking_table(ranking: dict[str, Any]) -> str:
    """One row per model, HR@K and NDCG@K under each protocol."""
    protocols = list(ranking["protocols"])
    metrics = list(ranking["agent"][protocols[0]])
    header = f"{'ranking':<10}" + "".join(f"{p[:24]:>{12 * len(metrics)}}" for p in protocols)
    lines = [header, f"{'':<10}" + "".join(f"{m:>12}" for _ in protocols for m in metrics)]
    for name in ("agent", "popular"):
        lines.append(f"{name:<10}" + "".join(
            f"{ranking[name][p][m]:>12.4f}" for p in protocols for m in metrics
        ))
    return "\n".join(lines)
