"""RecBole's Pop, SASRec and BERT4Rec on exactly the split recrl's ``algo=pretrain`` ranks.

Is recrl's pretrained encoder good for its data? This script asks RecBole (a widely used
recommender library, run in its own virtual environment: it pins packages recrl cannot) to train
its own models on the very leave-one-out split that ``python -m recrl.run env=ml100k
algo=pretrain`` evaluates, and prints their test HR@10 / NDCG@10 beside recrl's:

1. recrl's own code builds the sequences (``recrl.data.load_sequences`` with the env's ``data.*``
   settings: 5-core, chronological, ties in file order) and the history length L it ranks with;
2. they are written as a RecBole atomic file ``<name>.inter`` (``user_id:token``,
   ``item_id:token``, ``timestamp:float``): the tokens are recrl's own user and item indices, the
   timestamp each interaction's position in its user's sequence, so RecBole's time ordering
   (``order: TO``) and its leave-one-out split (``split: {LS: valid_and_test}``) give every user
   the same training items, validation item (second to last) and test item (last) as recrl's
   ``Sequences.leave_one_out``. The file is read back and checked before anything runs, and each
   RecBole process also reports the split it actually built (targets and, for sequential models,
   the histories it ranks from), which is compared with recrl's, interaction by interaction;
3. each model runs in a subprocess of ``--recbole-python`` (RecBole's defaults, except what the
   comparison fixes: full ranking, Hit/NDCG@10 on the test item, early stopping on valid
   NDCG@10, ``MAX_ITEM_LIST_LENGTH=--max-len``), and its test numbers are collected.

Two test numbers per RecBole model, from the same trained weights (RecBole's best on validation):

- ``RecBole``: RecBole's own evaluation. Its general models (Pop) exclude the user's earlier
  items from the ranking as recrl does; its sequential models (SASRec, BERT4Rec) rank the whole
  catalogue, earlier items included;
- ``recrl protocol``: the same scores ranked as ``recrl.ranking.evaluate_ranking`` ranks them:
  every item before the test item excluded (not only the last L), ties broken at random in
  expectation (RecBole's top-k breaks them by index). This is the column to read beside recrl.

recrl's rows: ``--recrl-run <run folder>`` reads a finished ``algo=pretrain`` run's
``results.json`` (the pretrained encoder and most-popular, full ranking of all users' test
items); recrl's most-popular is always computed here too (``recrl.ranking``), the anchor that
shows the two libraries rank the same items. Note what still differs by design: recrl's
pretraining trains on the simulator's training users only (90%) with L=10, RecBole on every
user's training part with L=--max-len; both rank every user's test item.

    # once: RecBole in its own venv (CPU torch; any torch RecBole accepts)
    python3.11 -m venv /work/recbole-venv
    /work/recbole-venv/bin/pip install recbole==1.2.1 "numpy<2" "setuptools<81" torch
    # the comparison at RecBole's defaults (hours on a CPU)
    python bench/recbole_reference.py --models Pop SASRec BERT4Rec --recrl-run <run folder>
    # plumbing check: one epoch each
    python bench/recbole_reference.py --models Pop SASRec BERT4Rec --epochs 1

Needs ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in RecBole's process (it reloads its checkpoints
with ``torch.load``, whose default changed in torch 2.6): set here for the subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from recrl.build import with_default_env
from recrl.data import DataConfig, Sequences, load_sequences
from recrl.ranking import evaluate_ranking, most_popular_scorer

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECBOLE_PYTHON = "/work/recbole-venv/bin/python"
#: The atomic file's columns, RecBole's ``name:type`` header.
HEADER = ("user_id:token", "item_id:token", "timestamp:float")
#: Sequential models whose default loss is RecBole's full-softmax CE, which refuses negative
#: sampling (``--config train_neg_sample_args=...`` still overrides it).
CE_SEQUENTIAL = ("SASRec", "BERT4Rec", "GRU4Rec", "Caser", "NARM", "STAMP", "SRGNN", "GCSAN",
                 "NextItNet", "LightSANs", "CORE", "FEARec", "GRU4RecF", "SASRecF", "FDSA")

# The program RecBole's interpreter runs: argv[1] is a JSON of its settings. It trains one model,
# evaluates the test items both ways (module docstring), dumps the split it built, and writes a
# JSON of everything to settings["out"].
RUNNER = r'''
import json, os, sys, time
settings = json.loads(sys.argv[1])
sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value settings from the command line
import torch
torch.set_num_threads(settings["threads"])
import numpy as np
import pandas as pd
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import ModelType, get_model, get_trainer, init_logger, init_seed

config = Config(model=settings["model"], dataset=settings["dataset"],
                config_file_list=[settings["config"]])
init_seed(config["seed"], config["reproducibility"])
init_logger(config)
dataset = create_dataset(config)
train_data, valid_data, test_data = data_preparation(config, dataset)
sequential = config["MODEL_TYPE"] == ModelType.SEQUENTIAL
uid, iid = dataset.uid_field, dataset.iid_field


def tokens(ds, field, ids):
    return [str(t) for t in ds.id2token(field, np.asarray(ids))]


def dump(loader, histories):
    ds = loader._dataset
    feat = ds.inter_feat
    rows = {"user": tokens(ds, uid, feat[uid].numpy()), "item": tokens(ds, iid, feat[iid].numpy()),
            "time": feat[dataset.time_field].numpy().tolist()}
    if sequential and histories:
        lists, lengths = feat[iid + "_list"].numpy(), feat["item_length"].numpy()
        rows["history"] = [tokens(ds, iid, lst[:n]) if n else [] for lst, n in zip(lists, lengths)]
    return rows


split = {"train": dump(train_data, False), "valid": dump(valid_data, True),
         "test": dump(test_data, True)}
model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
epoch_seconds, epoch_cpu_seconds, valid_seconds, valid_curve = [], [], [], []
train_epoch, valid_epoch = trainer._train_epoch, trainer._valid_epoch


def timed_train(*args, **kwargs):
    start, cpu = time.perf_counter(), time.process_time()
    result = train_epoch(*args, **kwargs)
    epoch_seconds.append(time.perf_counter() - start)
    epoch_cpu_seconds.append(time.process_time() - cpu)
    print(f"[runner] epoch {len(epoch_seconds)}: {epoch_seconds[-1]:.1f} s "
          f"({epoch_cpu_seconds[-1]:.1f} s of CPU)", flush=True)
    return result


def timed_valid(*args, **kwargs):
    start = time.perf_counter()
    score, result = valid_epoch(*args, **kwargs)
    valid_seconds.append(time.perf_counter() - start)
    valid_curve.append({k: float(v) for k, v in result.items()})
    return score, result


trainer._train_epoch, trainer._valid_epoch = timed_train, timed_valid
start = time.perf_counter()
trainer.fit(train_data, valid_data, saved=True, show_progress=False)
fit_seconds = time.perf_counter() - start
test_result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)

# The same weights ranked as recrl ranks: every earlier item of the user excluded, ties in
# expectation over random tie-breaking (recrl.ranking.ranking_metrics).
inter = pd.read_csv(settings["inter"], sep="\t", dtype=str)
inter.columns = [c.split(":")[0] for c in inter.columns]
inter["timestamp"] = inter["timestamp"].astype(float)
inter = inter.sort_values(["user_id", "timestamp"], kind="stable")
prefix = {u: g["item_id"].tolist()[:-1] for u, g in inter.groupby("user_id", sort=False)}
K = 10
discount = 1.0 / np.log2(np.arange(K) + 2.0)
cumulative = np.concatenate([[0.0], np.cumsum(discount)])


def protocol_sums(scores, users, targets, counts):
    scores = scores.clone().double()
    target = scores.gather(1, targets[:, None])  # a target seen before is still ranked
    scores[:, 0] = -np.inf
    for row, user in enumerate(users):
        seen = dataset.token2id(iid, prefix[user])
        scores[row, torch.as_tensor(np.atleast_1d(seen))] = -np.inf
    scores.scatter_(1, targets[:, None], target)
    allowed = scores > -np.inf
    higher = ((scores > target) & allowed).sum(1).numpy().astype(float)
    ties = ((scores == target) & allowed).sum(1).numpy().astype(float)  # the target included
    low, high = np.minimum(higher, K), np.minimum(higher + ties, K)
    counts["HR@10"] += float(((high - low) / ties).sum())
    counts["NDCG@10"] += float(((cumulative[high.astype(int)] - cumulative[low.astype(int)])
                                / ties).sum())
    topk = scores.topk(K, dim=1).indices  # RecBole's own tie-breaking, on recrl's exclusions
    hit = (topk == targets[:, None])
    counts["topk HR@10"] += float(hit.any(1).sum())
    counts["topk NDCG@10"] += float((hit.double() * torch.as_tensor(discount)).sum())
    counts["users"] += len(users)


def recrl_protocol(score_fn):
    """Test HR/NDCG@10 of RecBole's scores (score_fn None) or of score_fn(interaction)."""
    counts = dict.fromkeys(["HR@10", "NDCG@10", "topk HR@10", "topk NDCG@10", "users"], 0.0)
    with torch.no_grad():
        for batch in test_data:
            interaction, scores, positive_u, positive_i = trainer._full_sort_batch_eval(batch)
            interaction = interaction.cpu()
            if score_fn is not None:
                scores = score_fn(interaction)
            scores = scores.view(len(interaction), -1).cpu()
            users = tokens(dataset, uid, interaction[uid].numpy())
            targets = torch.zeros(len(interaction), dtype=torch.long)
            targets[positive_u.cpu()] = positive_i.cpu()
            protocol_sums(scores, users, targets, counts)
    users = counts.pop("users")
    return {k: v / users for k, v in counts.items()} | {"users": int(users)}


trainer.model.eval()
out = {"model": settings["model"], "sequential": sequential,
       "recbole_test": {k: float(v) for k, v in test_result.items()},
       "recrl_protocol": recrl_protocol(None),  # the scores RecBole's evaluation ranked
       "epochs_run": len(epoch_seconds), "epoch_seconds": epoch_seconds,
       "epoch_cpu_seconds": epoch_cpu_seconds,
       "valid_seconds": valid_seconds, "valid_curve": valid_curve, "fit_seconds": fit_seconds,
       "max_item_list_length": config["MAX_ITEM_LIST_LENGTH"] if sequential else None,
       "epochs": config["epochs"], "stopping_step": config["stopping_step"],
       "threads": torch.get_num_threads(), "torch": torch.__version__,
       "num_users": dataset.user_num - 1, "num_items": dataset.item_num - 1, "split": split}
if settings["model"] == "Pop":
    # RecBole's Pop counts an item once per training batch (an indexed +1 with repeated indices)
    # and counts the sampled negatives of its pointwise batches too; the exact training counts
    # show how much of a gap to recrl's most-popular that is.
    train = train_data._dataset.inter_feat[iid].numpy()
    exact = torch.as_tensor(np.bincount(train, minlength=dataset.item_num), dtype=torch.float64)
    out["pop_counts_differ"] = int((trainer.model.item_cnt.view(-1).cpu().double() != exact).sum())
    out["pop_exact_counts"] = recrl_protocol(
        lambda inter: exact.expand(len(inter), -1).clone())
with open(settings["out"], "w") as f:
    json.dump(out, f)
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["Pop", "SASRec", "BERT4Rec"],
                        help="RecBole model names, each run in its own process")
    parser.add_argument("--max-len", type=int, default=50,
                        help="RecBole's MAX_ITEM_LIST_LENGTH: the history a sequential model "
                             "reads (RecBole's default 50; recrl's pretraining reads 10)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="at most this many epochs (default: RecBole's, 300)")
    parser.add_argument("--stopping-step", type=int, default=None,
                        help="early stopping after this many epochs without a better valid "
                             "NDCG@10 (default: RecBole's, 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of RecBole")
    parser.add_argument("--seed", type=int, default=None, help="RecBole's seed (default 2020)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="more RecBole settings (YAML values), e.g. train_batch_size=256")
    parser.add_argument("--recbole-python", default=DEFAULT_RECBOLE_PYTHON,
                        help="the interpreter of the venv RecBole is installed in")
    parser.add_argument("--recrl-run", type=Path, default=None,
                        help="a finished algo=pretrain run folder: its results.json gives "
                             "recrl's rows")
    parser.add_argument("--override", nargs="*", default=[],
                        help="Hydra overrides choosing the logged-data env (env=ml100k unless "
                             "one of them chooses it); data.path defaults to RECRL_DATA_DIR or "
                             "../shared/data")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the atomic file, config, logs and results here (default: a "
                             "temporary folder, removed at the end)")
    parser.add_argument("--name", default="recrl_loo", help="RecBole's dataset name")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    return parser.parse_args(argv)


# -- recrl's side ------------------------------------------------------------------------------
def recrl_sequences(overrides: list[str]) -> tuple[Sequences, int, str]:
    """The sequences and history length of the env ``algo=pretrain`` runs on (``env=ml100k``
    unless ``overrides`` choose another), preprocessed by recrl's own ``load_sequences``."""
    if "RECRL_DATA_DIR" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
        os.environ["RECRL_DATA_DIR"] = str(REPO.parent / "shared" / "data")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=with_default_env([*overrides, "algo=pretrain"]))
    data = DataConfig.from_mapping(cfg.data)
    path = Path(data.path)
    if not path.is_absolute():
        path = Path.cwd() / path
    sequences = load_sequences(path, data.format, data.preprocess, cache_dir=None,
                               **data.read_options)
    return sequences, int(cfg.env.history_length), str(path)


def expected_split(sequences: Sequences) -> dict[str, tuple[list[int], int, int]]:
    """recrl's leave-one-out per user token (its index): ``(training items, valid, test)``."""
    split = {}
    for user in range(sequences.num_users):
        items = sequences.user_sequence(user).tolist()
        split[str(user)] = (items[:-2], items[-2], items[-1])
    return split


def recrl_most_popular(sequences: Sequences, history_length: int) -> dict[str, float]:
    """recrl's most-popular, ranked by ``recrl.ranking`` exactly as a pretraining run ranks it."""
    result = evaluate_ranking(most_popular_scorer(sequences), sequences,
                              history_length=history_length, ks=(10,), protocols=("full",))
    return result["full"]


# -- the atomic file ---------------------------------------------------------------------------
def write_atomic(sequences: Sequences, folder: Path, name: str) -> Path:
    """``folder/name/name.inter``: one row per interaction, user-major and chronological; tokens
    are recrl's user index and item id, the timestamp the position in the user's sequence (so
    RecBole's time order is recrl's order exactly, ties included)."""
    lengths = sequences.lengths
    users = torch.repeat_interleave(torch.arange(sequences.num_users), lengths)
    position = torch.arange(sequences.num_interactions) - torch.repeat_interleave(
        sequences.offsets[:-1], lengths)
    frame = pd.DataFrame({HEADER[0]: users.numpy(), HEADER[1]: sequences.items.numpy(),
                          HEADER[2]: position.numpy().astype(float)})
    path = folder / name / f"{name}.inter"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, sep="\t", index=False)
    return path


def read_back_split(path: Path) -> dict[str, tuple[list[int], int, int]]:
    """The split RecBole's ``order: TO`` + ``LS: valid_and_test`` makes of an atomic file: rows
    ordered by time within each user, the last one test, the one before it validation."""
    frame = pd.read_csv(path, sep="\t", dtype=str)
    frame.columns = [c.split(":")[0] for c in frame.columns]
    frame["timestamp"] = frame["timestamp"].astype(float)
    frame = frame.sort_values(["user_id", "timestamp"], kind="stable")
    split = {}
    for user, group in frame.groupby("user_id", sort=False):
        items = [int(i) for i in group["item_id"]]
        split[user] = (items[:-2], items[-2], items[-1])
    return split


def split_differences(expected: dict[str, tuple[list[int], int, int]],
                      actual: dict[str, tuple[list[int], int, int]]) -> list[str]:
    """What differs between two splits (empty: identical), at most a few lines."""
    problems = []
    if set(expected) != set(actual):
        missing, extra = set(expected) - set(actual), set(actual) - set(expected)
        problems.append(f"users differ: {len(missing)} missing, {len(extra)} extra")
    for user in sorted(set(expected) & set(actual), key=int):
        if expected[user] != actual[user]:
            problems.append(f"user {user}: recrl {expected[user]} vs {actual[user]}")
        if len(problems) >= 5:
            break
    return problems


def recbole_split_differences(dumped: dict[str, Any], sequences: Sequences,
                              history_length: int | None) -> list[str]:
    """Compares the split a RecBole process built (the runner's ``split``) with recrl's: every
    training interaction (a sequential model's training targets: all but each user's first),
    every validation and test target, and the histories a sequential model ranks them from
    (the last ``history_length`` items before the target)."""
    expected = expected_split(sequences)
    problems: list[str] = []
    train = pd.DataFrame(dumped["train"]).sort_values(["user", "time"], kind="stable")
    got = {u: [int(i) for i in g["item"]] for u, g in train.groupby("user", sort=False)}
    first = 1 if history_length is not None else 0  # sequential: a target needs a history
    for user, (items, _, _) in expected.items():
        if got.get(user, []) != items[first:]:
            problems.append(f"train, user {user}: {got.get(user, [])} vs recrl {items[first:]}")
            break
    for phase, index in (("valid", 1), ("test", 2)):
        rows = dumped[phase]
        if sorted(rows["user"], key=int) != sorted(expected, key=int):
            problems.append(f"{phase}: not one row per user")
            continue
        for row, user in enumerate(rows["user"]):
            items, valid, test = expected[user]
            target = (valid, test)[index - 1]
            if int(rows["item"][row]) != target:
                problems.append(f"{phase}, user {user}: item {rows['item'][row]} vs recrl "
                                f"{target}")
                break
            if history_length is not None:
                before = (items if phase == "valid" else items + [valid])[-history_length:]
                history = [int(i) for i in rows["history"][row]]
                if history != before:
                    problems.append(f"{phase}, user {user}: history {history} vs recrl {before}")
                    break
    return problems


# -- RecBole's side ------------------------------------------------------------------------------
def recbole_config(args: argparse.Namespace, model: str, data_path: Path, workdir: Path
                   ) -> dict[str, Any]:
    """RecBole's settings for one model: its defaults, but the comparison's data, split,
    metrics and lengths (and ``--epochs`` / ``--stopping-step`` / ``--config``)."""
    config: dict[str, Any] = {
        "data_path": str(data_path),
        "checkpoint_dir": str(workdir / "saved"),
        "field_separator": "\t",
        "USER_ID_FIELD": "user_id", "ITEM_ID_FIELD": "item_id", "TIME_FIELD": "timestamp",
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        # what recrl's split is: nothing filtered again (recrl's 5-core is in the file)
        "user_inter_num_interval": "[0,inf)", "item_inter_num_interval": "[0,inf)",
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO",
                      "mode": "full"},
        "metrics": ["Hit", "NDCG"], "topk": [10], "valid_metric": "NDCG@10",
        "MAX_ITEM_LIST_LENGTH": args.max_len,
        "show_progress": False, "worker": 0,
    }
    if model in CE_SEQUENTIAL:
        config["train_neg_sample_args"] = None  # RecBole's CE loss refuses negative sampling
    if args.epochs is not None:
        config["epochs"] = args.epochs
    if args.stopping_step is not None:
        config["stopping_step"] = args.stopping_step
    if args.seed is not None:
        config["seed"] = args.seed
    import yaml  # Hydra's dependency: always there with recrl

    for item in args.config:
        key, _, value = item.partition("=")
        config[key] = yaml.safe_load(value)
    return config


def run_recbole(args: argparse.Namespace, model: str, inter_path: Path, workdir: Path
                ) -> dict[str, Any]:
    """Trains and tests ``model`` in RecBole's interpreter; its runner's JSON."""
    import yaml

    config_path = workdir / f"{model}.yaml"
    config_path.write_text(yaml.safe_dump(
        recbole_config(args, model, inter_path.parent.parent, workdir), sort_keys=False))
    out = workdir / f"{model}.json"
    settings = {"model": model, "dataset": args.name, "config": str(config_path),
                "inter": str(inter_path), "out": str(out), "threads": args.threads}
    runner = workdir / "recbole_runner.py"
    runner.write_text(RUNNER)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    threads = str(args.threads)
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads,
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONWARNINGS="ignore")
    log_path = workdir / f"{model}.log"
    start = time.perf_counter()
    with log_path.open("w") as log_file:
        code = subprocess.call([args.recbole_python, str(runner), json.dumps(settings)],
                               cwd=workdir, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    if code != 0 or not out.is_file():
        tail = log_path.read_text().splitlines()[-30:]
        raise SystemExit(f"RecBole's {model} failed (exit {code}); {log_path} ends:\n"
                         + "\n".join(tail))
    result = json.loads(out.read_text())
    result["wall_seconds"] = wall
    return result


# -- recrl's rows and the table ----------------------------------------------------------------
def recrl_run_rows(run: Path) -> list[dict[str, Any]]:
    """The pretrained encoder's and most-popular's full-ranking test numbers of a finished
    ``algo=pretrain`` run, with its history length and steps from its ``.hydra/config.yaml``."""
    results = json.loads((run / "results.json").read_text())
    ranking = results.get("offline_ranking")
    if ranking is None:
        raise SystemExit(f"{run}/results.json has no offline_ranking: not an algo=pretrain run")
    length, steps, objective = "?", "?", "pretrain"
    config_file = run / ".hydra" / "config.yaml"
    if config_file.is_file():
        import yaml

        cfg = yaml.safe_load(config_file.read_text())
        length = cfg.get("env", {}).get("history_length", "?")
        steps = cfg.get("trainer", {}).get("max_steps", "?")
        objective = f"pretrain ({cfg.get('algo', {}).get('objective', '?')})"
    step = results.get("selected_weights", {}).get("step")
    rows = []
    for key, name in (("agent", f"{objective}, {run.name}"), ("popular", "most-popular")):
        full = ranking[key]["full"]
        rows.append({"source": "recrl", "model": name, "max_len": length,
                     "epochs": f"{steps} steps (best {step})" if key == "agent" else "-",
                     "HR@10": full["HR@10"], "NDCG@10": full["NDCG@10"],
                     "protocol HR@10": full["HR@10"], "protocol NDCG@10": full["NDCG@10"],
                     "s/epoch": None, "wall": None})
    return rows


def recbole_row(result: dict[str, Any]) -> dict[str, Any]:
    test, protocol = result["recbole_test"], result["recrl_protocol"]
    epochs = result["epochs_run"]
    curve = [point.get("ndcg@10", float("nan")) for point in result["valid_curve"]]
    if result["sequential"] and curve:
        best = max(range(len(curve)), key=curve.__getitem__) + 1
        epochs = f"{epochs} (best {best})"
    seconds = result["epoch_seconds"]
    return {"source": "RecBole", "model": result["model"],
            "max_len": result["max_item_list_length"] or "all",
            "epochs": epochs, "HR@10": test["hit@10"], "NDCG@10": test["ndcg@10"],
            "protocol HR@10": protocol["HR@10"], "protocol NDCG@10": protocol["NDCG@10"],
            "s/epoch": sum(seconds) / len(seconds) if seconds and result["sequential"] else None,
            "wall": result["wall_seconds"]}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = ["source", "model", "max_len", "epochs", "HR@10", "NDCG@10", "protocol HR@10",
               "protocol NDCG@10", "s/epoch", "wall"]
    labels = {"protocol HR@10": "HR@10 (recrl protocol)",
              "protocol NDCG@10": "NDCG@10 (recrl protocol)", "s/epoch": "train s/epoch",
              "wall": "wall s"}

    def cell(value: Any, column: str) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.1f}" if column in ("s/epoch", "wall") else f"{value:.4f}"
        return str(value)

    lines = ["| " + " | ".join(labels.get(c, c) for c in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row[c], c) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if not Path(args.recbole_python).is_file():
        raise SystemExit(f"--recbole-python {args.recbole_python} does not exist; create "
                         "RecBole's venv first (docs/recbole.md)")
    sequences, history_length, data_path = recrl_sequences(args.override)
    print(f"recrl's log: {data_path}: {sequences.num_users} users, {sequences.num_items} items, "
          f"{sequences.num_interactions} interactions; recrl ranks from L={history_length}",
          flush=True)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="recbole_reference_"))
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        inter_path = write_atomic(sequences, workdir / "data", args.name)
        problems = split_differences(expected_split(sequences), read_back_split(inter_path))
        if problems:
            raise SystemExit("the atomic file does not reproduce recrl's split:\n"
                             + "\n".join(problems))
        print(f"{inter_path}: read back, RecBole's LS split of it is recrl's leave-one-out for "
              f"all {sequences.num_users} users", flush=True)
        popular = recrl_most_popular(sequences, history_length)
        rows = []
        if args.recrl_run is not None:
            rows += recrl_run_rows(args.recrl_run)
        rows.append({"source": "recrl", "model": "most-popular (recrl.ranking)",
                     "max_len": history_length, "epochs": "-", "HR@10": popular["HR@10"],
                     "NDCG@10": popular["NDCG@10"], "protocol HR@10": popular["HR@10"],
                     "protocol NDCG@10": popular["NDCG@10"], "s/epoch": None, "wall": None})
        results = {}
        for model in args.models:
            print(f"RecBole {model}: running (log: {workdir / (model + '.log')})", flush=True)
            result = run_recbole(args, model, inter_path, workdir)
            length = result["max_item_list_length"]
            problems = recbole_split_differences(result.pop("split"), sequences, length)
            if problems:
                raise SystemExit(f"RecBole's {model} did not build recrl's split:\n"
                                 + "\n".join(problems))
            print(f"RecBole {model}: the split it built is recrl's (train, valid and test "
                  f"items{', histories' if length else ''} of all users); "
                  f"{result['epochs_run']} epochs, {result['wall_seconds']:.0f} s", flush=True)
            if "pop_exact_counts" in result:
                exact = result["pop_exact_counts"]
                print(f"  Pop: {result['pop_counts_differ']} items' counts differ from the exact "
                      f"training counts; with exact counts HR@10 {exact['HR@10']:.4f} NDCG@10 "
                      f"{exact['NDCG@10']:.4f} (RecBole's top-k ties: {exact['topk HR@10']:.4f}"
                      f" / {exact['topk NDCG@10']:.4f})", flush=True)
            results[model] = result
            rows.append(recbole_row(result))
            if "pop_exact_counts" in result:
                rows.append({**rows[-1], "model": "Pop, exact training counts",
                             "HR@10": exact["topk HR@10"], "NDCG@10": exact["topk NDCG@10"],
                             "protocol HR@10": exact["HR@10"],
                             "protocol NDCG@10": exact["NDCG@10"]})
        print()
        print(f"Test items of all {sequences.num_users} users, full ranking over "
              f"{sequences.num_items} items (RecBole at its defaults but max_len="
              f"{args.max_len}, epochs={args.epochs or 'default'}, threads={args.threads}):")
        print(markdown_table(rows))
        if args.json is not None:
            args.json.write_text(json.dumps({"rows": rows, "recbole": results}, indent=1))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
