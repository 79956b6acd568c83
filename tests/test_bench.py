"""The benchmark scripts of bench/: the reference rankers (hand-computed transitions, EASE
against its definition, the table on a small log, the target it ranks), the simulator table,
pretrained_policy's head policy, and the training benchmark: its table (the columns add up) and
its minimal loop (the module's own batches and steps).
fixed_popular, pretrained_policy and ranking_by_target on a real checkpoint are run by the
docs recipe test in tests/test_pretrain.py."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from recrl.data import PreprocessConfig, load_sequences
from recrl.ranking import evaluate_ranking, most_popular_scorer, popularity_scores
from recrl.build import with_default_env
from tests.conftest import CONF_DIR, load_bench
from tests.test_ranking import make_sequences


references = load_bench("ranking_references")

# Leave-one-out keeps [1, 2, 3] of user 0 and [3, 1, 2] of user 1 for training.
ROWS = [[1, 2, 3, 4, 5], [3, 1, 2, 5, 4]]
EMPTY = torch.zeros(1, 0)


def test_transitions_count_within_reach_and_never_across_users() -> None:
    sequences = make_sequences(ROWS, num_items=5)
    transitions = references.training_transitions(sequences, reach=2)
    # distance 1 (weight 1): 1->2 twice, 2->3, 3->1; distance 2 (weight 1/2): 1->3, 3->2.
    # User 0's last training item (3) and user 1's first (3) are not a transition.
    counts = torch.zeros(6, 6)
    counts[1, 2], counts[2, 3], counts[3, 1], counts[1, 3], counts[3, 2] = 2, 1, 1, 0.5, 0.5
    expected = counts / (counts.sum(1, keepdim=True) + 1.0)
    torch.testing.assert_close(transitions, expected)
    assert transitions[3, 3] == 0.0


def test_markov_scorer_weighs_recent_items_more() -> None:
    sequences = make_sequences(ROWS, num_items=5)
    transitions = references.training_transitions(sequences, reach=2)
    score_fn = references.markov_scorer(sequences, reach=2, decay=0.5)
    history = torch.tensor([[0, 1, 3]])  # padding, then 1, then 3 (the most recent)
    popularity = popularity_scores(sequences)
    expected = 0.5 * transitions[1] + transitions[3] + 1e-3 * popularity / popularity.max()
    torch.testing.assert_close(score_fn(history, EMPTY, EMPTY), expected[None])


def test_item_knn_is_cosine_of_user_sets() -> None:
    rows = [[1, 2, 3, 9, 9], [1, 3, 4, 9, 9], [2, 4, 5, 9, 9]]  # training parts: first three
    sequences = make_sequences(rows, num_items=9)
    score_fn = references.item_knn_scorer(sequences)
    scores = score_fn(torch.tensor([[1]]), EMPTY, EMPTY)[0]
    # item 1's users {0, 1}; item 3's {0, 1}: cosine 1; item 2's {0, 2}, item 4's {1, 2}: 1/2.
    torch.testing.assert_close(scores[[2, 3, 4, 5]], torch.tensor([0.5, 1.0, 0.5, 0.0]))
    assert scores[1] == 0.0  # an item is not its own neighbour


def test_ease_solves_its_constrained_ridge_regression() -> None:
    """EASE's closed form equals, column by column, the ridge regression of an item's column on
    every other item's (the zero-diagonal constraint), which is its definition."""
    generator = torch.Generator().manual_seed(0)
    rows = [(torch.randperm(8, generator=generator)[:6] + 1).tolist() for _ in range(12)]
    sequences = make_sequences(rows, num_items=8)
    penalty = 2.0
    score_fn = references.ease_scorer(sequences, penalty)
    user_item = references.training_user_item(sequences)[:, 1:].double()  # [U, 8], no padding
    weights = torch.zeros(8, 8, dtype=torch.float64)
    for j in range(8):
        others = [k for k in range(8) if k != j]
        x = user_item[:, others]
        solution = torch.linalg.solve(x.T @ x + penalty * torch.eye(7, dtype=torch.float64),
                                      x.T @ user_item[:, j])
        weights[others, j] = solution
    history = torch.tensor([[0, 2, 5, 7]])
    expected = weights[[1, 4, 6]].sum(0)  # items 2, 5, 7 -> rows 1, 4, 6
    scores = score_fn(history, EMPTY, EMPTY)[0]
    torch.testing.assert_close(scores[1:].double(), expected, atol=1e-5, rtol=1e-4)
    assert scores[0] == 0.0


def small_log(tmp_path) -> Path:
    """80 users' random sequences of 20-39 of 150 items, in the BERT4Rec format."""
    generator = torch.Generator().manual_seed(1)
    lines = []
    for user in range(80):
        items = torch.randperm(150, generator=generator)[: 20 + user % 20] + 1
        lines += [f"{user + 1} {item}" for item in items.tolist()]
    log_file = tmp_path / "log.txt"
    log_file.write_text("\n".join(lines) + "\n")
    return log_file


def test_bench_overrides_start_from_ml100k_unless_they_choose_an_env() -> None:
    """``--override encoder=bert_text`` alone keeps the scripts on ML-100K (it once fell back to
    the synthetic env and failed), and an env of the user's own is never given twice."""
    assert with_default_env([]) == ["env=ml100k"]
    assert with_default_env(["encoder=bert_text", "env.history_length=20"]) == [
        "env=ml100k", "encoder=bert_text", "env.history_length=20"]
    assert with_default_env(["encoder=bert_text", "env=beauty"]) == ["encoder=bert_text",
                                                                     "env=beauty"]
    assert with_default_env(["+env=logged"]) == ["+env=logged"]
    assert with_default_env([], default_env="beauty") == ["env=beauty"]


def run_references(tmp_path, monkeypatch, capsys, *extra: str,
                   overrides: tuple[str, ...] = ()) -> tuple[str, dict[str, str]]:
    """The script's output and its table rows by ranker name, on the small log as env=logged."""
    env = ["env=logged", f"data.path={small_log(tmp_path)}", "data.format=sequences",
           f"data.cache_dir={tmp_path / 'cache'}", "env.fit_epochs=5", *overrides]
    monkeypatch.setattr(sys, "argv", ["ranking_references.py", *extra, "--override", *env])
    references.main()
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| ranker")}
    return out, rows


def test_script_prints_every_reference_beside_most_popular(tmp_path, monkeypatch, capsys) -> None:
    """The documented command (docs/ranking.md) on a small log in the BERT4Rec format: one row per ranker, each
    protocol's HR@10 / NDCG@10 with its ratio to most-popular (1.00x for most-popular itself)."""
    out, rows = run_references(tmp_path, monkeypatch, capsys)
    assert set(rows) == {"most_popular", "markov", "item_knn", "ease"}
    assert rows["most_popular"].count("(1.00x)") == 3  # full, uniform and popularity samples
    assert "80 users" in out and "L = 10" in out and "test item" in out


def test_script_ranks_the_log_as_the_env_config_preprocesses_it(tmp_path, monkeypatch,
                                                               capsys) -> None:
    """The log, its k-core filter and L come from the composed env config: keeping users with
    30 or more interactions ranks fewer users, as many as load_sequences keeps."""
    out, _ = run_references(tmp_path, monkeypatch, capsys,
                            overrides=("data.min_user_interactions=30", "env.history_length=4"))
    kept = load_sequences(small_log(tmp_path), "sequences",
                          PreprocessConfig(min_user_interactions=30, min_item_interactions=5),
                          cache_dir=tmp_path / "cache").num_users
    assert kept < 80
    assert f"{kept} users" in out and "L = 4" in out


@pytest.mark.parametrize("target", ["test", "valid"])
def test_script_ranks_the_leave_one_out_item_it_is_asked_for(
        tmp_path, monkeypatch, capsys, target: str) -> None:
    """``--target`` picks the item ranked: most-popular's full-ranking HR@10 / NDCG@10 in the
    table are those of ``evaluate_ranking`` on that target (on this log the two targets' numbers
    differ, so ranking the other one fails)."""
    out, rows = run_references(tmp_path, monkeypatch, capsys, "--target", target)
    assert f"{target} item" in out
    sequences = load_sequences(small_log(tmp_path), "sequences",
                               PreprocessConfig(min_user_interactions=5, min_item_interactions=5),
                               cache_dir=tmp_path / "cache")
    expected = {
        name: evaluate_ranking(most_popular_scorer(sequences), sequences, history_length=10,
                               target=name, ks=(10,), protocols=("full",))["full"]
        for name in ("test", "valid")}
    assert expected["test"]["HR@10"] != expected["valid"]["HR@10"]
    full_cell = rows["most_popular"].split("|")[2].strip()
    assert full_cell == (f"{expected[target]['HR@10']:.4f} / {expected[target]['NDCG@10']:.4f} "
                         "(1.00x)")


def test_simulator_benchmark_prints_one_rate_per_cell_and_skips_oversized_ones(
        monkeypatch, capsys) -> None:
    simulator = load_bench("simulator")
    # 4 users x 51 item slots x 3 masks = 612 bytes: over a 500-byte cap, so that cell is skipped.
    monkeypatch.setattr(sys, "argv", ["simulator.py", "--users", "1", "4", "--items", "30", "50",
                                      "--seconds", "0.05", "--steps", "3", "--history-length", "5",
                                      "--max-mask-gb", "5e-7"])
    simulator.main()
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ") and "\\" not in line]
    cells = [[cell.strip() for cell in line.strip("| ").split("|")] for line in table]
    assert [row[0] for row in cells] == ["1", "4"]
    assert cells[1][2] == "skipped" and "4 users x 50 items skipped" in out
    for rate in (cells[0][1], cells[0][2], cells[1][1]):  # user-steps per second, e.g. 1.2k
        assert rate[0].isdigit() and "steps" not in rate  # 3 timed steps: no warning


def test_head_policy_picks_the_best_allowed_item_or_samples_the_softmax_of_allowed_items() -> None:
    """bench/pretrained_policy.py's ``HeadPolicy``: greedy is the argmax over the items the
    environment allows; sampled, masked items are never drawn and the draws follow
    ``softmax(scale * scores)`` over the allowed items."""
    from tensordict import TensorDict

    head_policy = load_bench("pretrained_policy").HeadPolicy
    scores = torch.tensor([0.0, 3.0, 1.0, 2.0, 0.0])  # item 1 scores best but is not allowed
    allowed = torch.tensor([False, False, True, True, True])
    num_users = 4000
    td = TensorDict({"history": torch.zeros(num_users, 3, dtype=torch.long),
                     "history_response": torch.zeros(num_users, 3),
                     "history_watch_time": torch.zeros(num_users, 3),
                     "action_mask": allowed.expand(num_users, -1)}, batch_size=[num_users])
    encoder = lambda history, response, watch_time: torch.zeros(history.shape[0], 2)  # noqa: E731
    scorer = lambda state: scores.expand(state.shape[0], -1)  # noqa: E731

    assert (head_policy(encoder, scorer, None)(td.clone())["action"] == 3).all()
    actions = head_policy(encoder, scorer, 1.0, seed=0)(td.clone())["action"]
    frequencies = torch.bincount(actions, minlength=5).float() / num_users
    expected = torch.softmax(torch.tensor([1.0, 2.0, 0.0]), 0)  # items 2, 3, 4
    assert frequencies[:2].sum() == 0
    assert torch.allclose(frequencies[2:], expected, atol=0.03)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_training_benchmarks_minimal_loop_trains_on_the_modules_own_batches(
        algo: str, tmp_path: Path) -> None:
    """bench/training.py's minimal side runs the algorithm module's own work, not a copy of it:
    every batch ``rollout_to_batches`` yields goes to ``training_step`` once, in order, and each
    is applied by the module's ``optimizer_step`` (DQN: its target network moves; PPO: the
    learning rate anneals to 0 over the loop's steps, as ``adamw`` schedules it)."""
    training = load_bench("training")
    steps = 6
    cfg = training.compose_config(algo, tmp_path, steps, ["debug=smoke"])
    module = training.build_minimal_module(cfg)
    yielded, trained, applied = [], [], []
    rollout_to_batches, training_step = module.rollout_to_batches, module.training_step
    optimizer_step = module.optimizer_step

    def spy_batches(rollout):
        for batch in rollout_to_batches(rollout):
            yielded.append(batch)
            yield batch

    def spy_step(batch, batch_idx):
        trained.append((batch, batch_idx))
        return training_step(batch, batch_idx)

    def spy_optimizer_step(epoch, batch_idx, optimizer, closure):
        applied.append(batch_idx)
        return optimizer_step(epoch, batch_idx, optimizer, closure)

    module.rollout_to_batches, module.training_step = spy_batches, spy_step
    module.optimizer_step = spy_optimizer_step
    weights = {k: v.detach().clone() for k, v in module.named_parameters()}
    if algo == "dqn":
        target = module.loss_module.target_value_network_params.clone()
    clock = training.Clock(1, steps, time.perf_counter)
    loop = training.minimal_loop(module, clock, steps)
    assert sum(1 for _ in loop) == steps

    assert len(yielded) == steps
    assert [batch for batch, _ in trained] == yielded  # the same objects, each once, in order
    assert [index for _, index in trained] == applied == list(range(steps))
    assert all(not torch.equal(weights[k], v) for k, v in module.named_parameters()
               if k.startswith("encoder.bert.encoder"))  # the updates reached the encoder
    if algo == "dqn":
        assert len(module.replay_buffer) >= cfg.algo.learning_starts
        moved = target != module.loss_module.target_value_network_params
        assert moved.any()
    else:
        assert module.optimizers().param_groups[0]["lr"] == pytest.approx(0.0)
    result = clock.result(steps - 1)
    assert result["logging"] == result["callbacks"] == 0.0
    assert result["update"] > 0 and result["batch"] > 0


def test_training_benchmark_table_adds_up(monkeypatch, capsys) -> None:
    """bench/training.py on DQN for a few steps: each row's phases add up to its time per update,
    frames/s is updates/s times the frames each update costs (``frames_per_batch /
    updates_per_batch``), the minimal loop spends nothing on logging or callbacks, and the
    ratio column is recrl's rate over the minimal loop's."""
    # --threads 0 leaves this process's torch threads alone; the script's quiet() raises the
    # level of Lightning's and TorchRL's loggers, put back afterwards for the tests that follow.
    monkeypatch.setattr(sys, "argv", ["training.py", "--algos", "dqn", "--steps", "2",
                                      "--warmup", "2", "--repeats", "1", "--no-side-costs",
                                      "--threads", "0"])
    levels = {name: logging.getLogger(name).level
              for name in ("lightning", "lightning.pytorch", "lightning.fabric", "torchrl")}
    training = load_bench("training")
    try:
        training.main()
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)  # setLevel also clears the loggers' caches
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| algo |"))
    columns = [cell.strip() for cell in header.split("|")[1:-1]]
    rows = {}
    for line in out.splitlines():
        if line.startswith("| dqn |"):
            cells = dict(zip(columns, (cell.strip() for cell in line.split("|")[1:-1])))
            rows[cells["way"]] = cells
    assert set(rows) == {"recrl", "minimal"}
    phases = [f"{phase} ms" for phase in training.PHASES]
    dqn = OmegaConf.load(CONF_DIR / "algo" / "dqn.yaml")  # the config the bench trains
    frames_per_update = dqn.frames_per_batch / dqn.updates_per_batch
    for cells in rows.values():
        updates_per_s = float(cells["updates/s"])
        assert sum(float(cells[p]) for p in phases) == pytest.approx(1000 / updates_per_s,
                                                                     rel=0.01)
        frames = cells["frames/s"]  # "12.34k" from 10,000 on
        frames_per_s = float(frames[:-1]) * 1e3 if frames.endswith("k") else float(frames)
        assert frames_per_s == pytest.approx(updates_per_s * frames_per_update, rel=0.01)
    assert float(rows["minimal"]["logging ms"]) == float(rows["minimal"]["callbacks ms"]) == 0.0
    ratio = float(rows["recrl"]["updates/s"]) / float(rows["minimal"]["updates/s"])
    assert float(rows["recrl"]["recrl/minimal"]) == pytest.approx(ratio, abs=0.01)
    # Rates keep four significant digits, so the checks above hold on a machine so loaded that
    # it does under one update a second (with two decimals a CI run under load failed them).
    assert [training.fmt_updates(rate) for rate in (0.53491, 12.3456, 1234.56)] == [
        "0.5349", "12.35", "1235"]
