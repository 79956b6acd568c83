"""Pretraining (BERT4Rec's cloze, SASRec's causal objective): its windows, its losses, that it
learns, and starting RL from it."""

from __future__ import annotations

import csv
import sys
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch

from lightning_modules.dqn import DQNModule
from lightning_modules.pretrain import SequencePretrainModule, TrainingWindows
from recrl.callbacks import RankingValidation
from recrl.data import Sequences
from recrl.encoders import HistoryEncoder, ItemScorer
from recrl.envs import InterestEvolutionEnv
from recrl.observation import CLICKED, PADDING
from tests.conftest import (
    ML100K, load_bench, ml100k_data, needs_ml100k, read_results, run_recrl, run_recrl_in_process,
)


def toy_sequences(num_items: int = 12, heldout: tuple[bool, ...] = (False, False, True)) -> Sequences:
    """User 0: items 1..7, user 1: 8 9 10 11 12, user 2 (held out): 2 4 6 8 10."""
    per_user = [list(range(1, 8)), [8, 9, 10, 11, 12], [2, 4, 6, 8, 10]]
    items = torch.tensor([i for seq in per_user for i in seq])
    lengths = torch.tensor([len(seq) for seq in per_user])
    return Sequences(
        items=items,
        offsets=torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]),
        num_items=num_items,
        item_raw_ids=torch.arange(-1, num_items),
        user_raw_ids=torch.arange(3),
        heldout_users=torch.tensor(heldout),
        ratings=items.float() / 10,  # a rating that tells items apart
    )


class FakeLoggedEnv:
    """Just what the pretraining module reads from a logged-data environment."""

    def __init__(self, sequences: Sequences) -> None:
        self.sequences = sequences


def make_module(sequences: Sequences, history_length: int = 3, **kwargs) -> SequencePretrainModule:
    """A small module; ``objective="causal"`` gets the causal encoder it needs."""
    encoder = HistoryEncoder(sequences.num_items, history_length, hidden_size=32, num_layers=1,
                             num_heads=2, intermediate_size=64,
                             causal=kwargs.get("objective") == "causal")
    return SequencePretrainModule(encoder, lambda **_: FakeLoggedEnv(sequences), **kwargs)


def test_windows_are_the_items_before_each_target_of_training_users_only() -> None:
    windows = TrainingWindows(toy_sequences(), history_length=3)
    # User 0 trains on 1..5 (6 and 7 are validation and test): targets 2..5; user 1 on 8 9 10:
    # targets 9, 10; user 2 is held out.
    assert len(windows) == 4 + 2
    batch = windows.batch(torch.arange(len(windows)))
    assert batch["next_item"].tolist() == [2, 3, 4, 5, 9, 10]
    assert batch["history"].tolist() == [
        [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4],  # left-padded, most recent last
        [0, 0, 8], [0, 8, 9],  # never reaches back into user 0's items
    ]
    assert batch["history_response"].tolist()[0] == [PADDING, PADDING, CLICKED]
    torch.testing.assert_close(batch["history_watch_time"][3], torch.tensor([0.2, 0.3, 0.4]))
    torch.testing.assert_close(batch["history_watch_time"][4], torch.tensor([0.0, 0.0, 0.8]))
    # The rating head's targets: the logged ratings of the next items (item / 10 here).
    torch.testing.assert_close(batch["next_rating"], batch["next_item"].float() / 10)


def test_train_on_validation_item_adds_it_and_never_the_test_item() -> None:
    """BERT4Rec's own data (its validation item in training): user 0 trains on 1..6, user 1 on
    8..11; the test items 7 and 12 and the held-out user stay out."""
    windows = TrainingWindows(toy_sequences(), history_length=3, train_on_validation_item=True)
    batch = windows.batch(torch.arange(len(windows)))
    assert batch["next_item"].tolist() == [2, 3, 4, 5, 6, 9, 10, 11]
    assert batch["history"][4].tolist() == [3, 4, 5] and batch["history"][7].tolist() == [8, 9, 10]
    torch.testing.assert_close(batch["history_watch_time"][7], torch.tensor([0.8, 0.9, 1.0]))
    torch.testing.assert_close(batch["next_rating"], batch["next_item"].float() / 10)


def test_ranking_validation_ranks_validation_users_when_their_validation_items_are_trained_on(
        ) -> None:
    """Pretraining that trains on every training user's validation item validates on the
    validation users alone (never on the test users either)."""
    sequences = toy_sequences(heldout=(False, True, True))
    sequences.validation_users = torch.tensor([False, True, False])  # user 2 is a test user
    everyone = RankingValidation(sequences, every_n_steps=10, num_users=5, seed=0)
    held_out = RankingValidation(sequences, every_n_steps=10, num_users=5, seed=0,
                                 heldout_only=True)
    assert everyone.users.tolist() == [0, 1, 2]
    assert held_out.users.tolist() == [1]
    with pytest.raises(ValueError, match="no validation users"):
        RankingValidation(toy_sequences(heldout=(False, False, False)), every_n_steps=10,
                          num_users=5, seed=0, heldout_only=True)


def test_ranking_validation_keeps_a_copy_of_the_best_weights_and_checkpoints_it() -> None:
    module = make_module(toy_sequences())
    validation = RankingValidation(toy_sequences(), every_n_steps=10, num_users=5, seed=0,
                                   keep_best=True)
    first = module.next_item_head.item_bias.detach().clone()
    validation._add_point({"step": 10, "HR@10": 0.5, "NDCG@10": 0.3}, module)
    with torch.no_grad():
        module.next_item_head.item_bias.add_(1.0)  # training goes on: the kept copy must not follow
    validation._add_point({"step": 20, "HR@10": 0.5, "NDCG@10": 0.4}, module)  # a tie
    validation._add_point({"step": 30, "HR@10": 0.4, "NDCG@10": 0.4}, module)
    assert validation.best["point"]["step"] == 10
    torch.testing.assert_close(validation.best["weights"]["next_item_head.item_bias"], first)
    validation._add_point({"step": 40, "HR@10": 0.6, "NDCG@10": 0.1}, module)
    assert validation.best["point"]["step"] == 40
    torch.testing.assert_close(validation.best["weights"]["next_item_head.item_bias"], first + 1.0)
    resumed = RankingValidation(toy_sequences(), every_n_steps=10, num_users=5, seed=0,
                                keep_best=True)
    resumed.load_state_dict(validation.state_dict())
    assert resumed.best["point"]["step"] == 40


def test_without_masking_only_the_next_item_and_its_rating_are_learnt() -> None:
    module = make_module(toy_sequences(), mask_prob=0.0, rating_weight=0.5)
    batch = module.windows.batch(torch.arange(len(module.windows)))
    losses = module.losses(batch)
    assert losses["cloze"].item() == 0.0
    torch.testing.assert_close(losses["loss"], losses["next_item"] + 0.5 * losses["rating"])


def test_masked_positions_are_items_never_padding() -> None:
    module = make_module(toy_sequences(), mask_prob=0.99)
    batch = module.windows.batch(torch.arange(len(module.windows)))
    torch.manual_seed(0)
    losses = module.losses(batch)
    # Every real item masked: the cloze targets are exactly the window items (10 of them), so the
    # loss is finite and near log(13) at initialisation, not polluted by padding targets.
    assert torch.isfinite(losses["cloze"])
    assert abs(losses["cloze"].item() - torch.log(torch.tensor(13.0)).item()) < 0.5


def test_causal_loss_is_every_window_item_predicting_the_item_after_it() -> None:
    """The windows [0 0 1] -> 2 and [1 2 3] -> 4 of user 0: the causal loss is the mean CE of the
    next-item head over the real positions' outputs against the listed successors, padding
    predicting nothing, the last position predicting the item after the window; the rating head
    reads the last position (the user's state)."""
    module = make_module(toy_sequences(), objective="causal", rating_weight=0.5)
    batch = module.windows.batch(torch.tensor([0, 2]))
    assert batch["history"].tolist() == [[0, 0, 1], [1, 2, 3]]
    losses = module.losses(batch)
    assert set(losses) == {"next_item", "rating", "loss"}  # no cloze term
    hidden = module.encoder.contextualise(
        module.encoder.embed_tokens(batch["history"], batch["history_response"],
                                    batch["history_watch_time"]),
        batch["history"])  # [2, 4, H], the state token's output first
    # (window, output position) -> the item it must predict
    pairs = {(0, 3): 2, (1, 1): 2, (1, 2): 3, (1, 3): 4}
    logits = module.next_item_head(torch.stack([hidden[w, p] for w, p in pairs]))
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor(list(pairs.values())))
    torch.testing.assert_close(losses["next_item"], expected)
    rating = module.rating_head.score_items(hidden[:, 3], batch["next_item"])
    torch.testing.assert_close(losses["rating"],
                               torch.nn.functional.mse_loss(rating, batch["next_rating"]))
    torch.testing.assert_close(losses["loss"], expected + 0.5 * losses["rating"])


def test_the_objective_and_the_encoder_attention_must_agree() -> None:
    causal_encoder = HistoryEncoder(12, 3, hidden_size=32, num_layers=1, num_heads=2,
                                    intermediate_size=64, causal=True)
    env = lambda **_: FakeLoggedEnv(toy_sequences())  # noqa: E731
    with pytest.raises(ValueError, match="algo.objective=causal .* add encoder.causal=true"):
        SequencePretrainModule(HistoryEncoder(12, 3), env, objective="causal")
    with pytest.raises(ValueError, match="algo.objective=cloze .* use algo.objective=causal"):
        SequencePretrainModule(causal_encoder, env)
    with pytest.raises(ValueError, match=r"algo.objective='sasrec': choose cloze \| causal"):
        SequencePretrainModule(causal_encoder, env, objective="sasrec")
    # No parameter that would get no gradient (DDP refuses them): no [MASK], no cloze head.
    module = SequencePretrainModule(causal_encoder, env, objective="causal")
    assert module.mask_token is None and module.cloze_head is None
    assert not any(name.startswith(("mask_token", "cloze_head"))
                   for name, _ in module.named_parameters())


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_pretraining_learns_the_next_item_and_its_rating(objective: str) -> None:
    """A log where each item is always followed by the next one, rated item / 10: after
    training, the next-item head ranks the true successor first for most windows (at
    initialisation: ~1/12) and the rating head predicts the successor's rating to within a
    fraction of the ratings' spread (their standard deviation is 0.33; at initialisation the
    error is ~0.7, the ratings' root mean square).
    (200 steps measured: accuracy 1.0, rating error 0.01.)"""
    torch.manual_seed(0)
    L.seed_everything(0, verbose=False)
    sequences = toy_sequences(heldout=(False, False, False))
    module = make_module(sequences, objective=objective, mask_prob=0.2, batch_size=8, lr=1e-2,
                         warmup_steps=1)
    trainer = L.Trainer(max_steps=200, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    batch = module.windows.batch(torch.arange(len(module.windows)))
    module.eval()
    with torch.no_grad():
        scores = module.item_scores(
            batch["history"], batch["history_response"], batch["history_watch_time"]
        )
        state = module.encoder(batch["history"], batch["history_response"],
                               batch["history_watch_time"])
        rating = module.rating_head.score_items(state, batch["next_item"])
    accuracy = (scores.argmax(-1) == batch["next_item"]).float().mean().item()
    assert accuracy >= 0.8
    rating_error = (rating - batch["next_rating"]).pow(2).mean().sqrt().item()
    assert rating_error < 0.1


@pytest.mark.parametrize("head", ["rating", "next_item", True, "auto"])
def test_an_encoder_and_its_scorer_start_from_a_pretraining_checkpoint(tmp_path: Path,
                                                                      head: str | bool) -> None:
    module = make_module(toy_sequences())
    heads = {"rating": module.rating_head, "next_item": module.next_item_head,
             True: module.next_item_head,  # True: what it meant before the rating head
             "auto": module.rating_head}  # auto: the rating head where there is one
    pretrained_head = heads[head]
    with torch.no_grad():
        for other in (module.rating_head, module.next_item_head):
            other.item_bias.normal_()  # something not at its initial value, and unlike the other
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)

    encoder = HistoryEncoder(12, 3, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, init_from=str(path), init_scorer=head)
    assert encoder.pretrained_scorer_head == {True: "next_item", "auto": "rating"}.get(head, head)
    for name, value in module.encoder.state_dict().items():
        torch.testing.assert_close(encoder.state_dict()[name], value)
    scorer = ItemScorer(encoder)
    torch.testing.assert_close(scorer.item_bias, pretrained_head.item_bias)
    history = torch.tensor([[0, 1, 2]])
    response = torch.full_like(history, CLICKED)
    watch = torch.ones(1, 3)
    module.eval()
    torch.testing.assert_close(scorer(encoder(history, response, watch)),
                               pretrained_head(module.encoder(history, response, watch)))


def test_dqn_starts_its_q_values_from_the_rating_head_in_reward_scale_units(
        tmp_path: Path) -> None:
    """The rating head predicts a rating (1-5); DQN's Q-values are returns times reward_scale.
    The online and the target network both start from the head times reward_scale."""
    module = make_module(toy_sequences())
    with torch.no_grad():
        module.rating_head.item_bias.normal_(mean=3.0)
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    encoder = HistoryEncoder(12, 3, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, init_from=str(path))
    dqn = DQNModule(encoder, partial(InterestEvolutionEnv, num_items=12, history_length=3),
                    reward_scale=0.01, frames_per_batch=16, num_envs=2, n_steps=1)
    history = torch.tensor([[0, 1, 2]])
    response = torch.full_like(history, CLICKED)
    watch = torch.ones(1, 3)
    module.eval()
    expected = 0.01 * module.rating_head(module.encoder(history, response, watch))
    state = dqn.q_network.encoder(history, response, watch)
    torch.testing.assert_close(dqn.q_network.scorer(state), expected)
    target_bias = dqn.loss_module.target_value_network_params["module", "0", "module", "scorer",
                                                              "item_bias"]
    torch.testing.assert_close(target_bias, 0.01 * module.rating_head.item_bias)


def test_a_log_without_ratings_trains_no_rating_head_and_says_so_when_asked_for_it(
        tmp_path: Path) -> None:
    sequences = toy_sequences()
    sequences.ratings = None
    module = make_module(sequences)
    assert module.rating_head is None
    assert "rating" not in module.losses(module.windows.batch(torch.arange(4)))
    with torch.no_grad():
        module.next_item_head.item_bias.normal_()  # unlike a fresh scorer's
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    shape = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match=r"has no rating head .* set encoder.init_scorer to "
                                         r"next_item \| auto or null"):
        HistoryEncoder(12, 3, **shape, init_from=str(path), init_scorer="rating")
    HistoryEncoder(12, 3, **shape, init_from=str(path), init_scorer="next_item")  # it has that
    # The default, auto, takes the next-item head: the two-step recipe works on such logs too.
    encoder = HistoryEncoder(12, 3, **shape, init_from=str(path))
    assert encoder.pretrained_scorer_head == "next_item"
    torch.testing.assert_close(ItemScorer(encoder).item_bias, module.next_item_head.item_bias)
    with pytest.raises(ValueError, match=r"init_scorer='ratings': choose rating \| next_item "
                                         r"\| auto or null"):
        HistoryEncoder(12, 3, **shape, init_from=str(path), init_scorer="ratings")


def test_init_scorer_auto_refuses_a_checkpoint_without_any_head(tmp_path: Path) -> None:
    module = make_module(toy_sequences())
    encoder_only = {k: v for k, v in module.state_dict().items() if k.startswith("encoder.")}
    path = tmp_path / "encoder_only.ckpt"
    torch.save({"state_dict": encoder_only}, path)
    shape = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match=r"has none of the heads rating \| next_item; set "
                                         r"encoder.init_scorer=null"):
        HistoryEncoder(12, 3, **shape, init_from=str(path))
    HistoryEncoder(12, 3, **shape, init_from=str(path), init_scorer=None)  # the encoder loads


@pytest.mark.parametrize("init_scorer", [None, False])
def test_init_scorer_null_loads_the_encoder_only(tmp_path: Path, init_scorer) -> None:
    module = make_module(toy_sequences())
    with torch.no_grad():
        module.next_item_head.item_bias.fill_(1.0)
        module.rating_head.item_bias.fill_(1.0)
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    encoder = HistoryEncoder(12, 3, hidden_size=32, num_layers=1, num_heads=2,
                             intermediate_size=64, init_from=str(path), init_scorer=init_scorer)
    torch.testing.assert_close(encoder.item_embedding.weight, module.encoder.item_embedding.weight)
    assert ItemScorer(encoder).item_bias.abs().sum() == 0  # a fresh scorer


@pytest.mark.parametrize("objective", ["cloze", "causal"])
def test_a_checkpoint_is_read_with_the_attention_it_was_pretrained_with(
        tmp_path: Path, objective: str) -> None:
    """The weights of either attention fit the other, so the checkpoint's objective (in its
    Lightning hyper-parameters) decides: a mismatch is refused, naming the setting to change."""
    module = make_module(toy_sequences(), objective=objective)
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict(),
                "hyper_parameters": {"objective": objective}}, path)
    shape = dict(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    causal = objective == "causal"
    with pytest.raises(ValueError, match=f"algo.objective={objective}.* set "
                                         f"encoder.causal={str(causal).lower()}"):
        HistoryEncoder(12, 3, **shape, init_from=str(path), causal=not causal)
    encoder = HistoryEncoder(12, 3, **shape, init_from=str(path), causal=causal).eval()
    history = torch.tensor([[0, 1, 2]])
    response = torch.full_like(history, CLICKED)
    watch = torch.ones(1, 3)
    module.eval()
    torch.testing.assert_close(ItemScorer(encoder)(encoder(history, response, watch)),
                               module.rating_head(module.encoder(history, response, watch)))


def test_a_checkpoint_for_another_catalogue_is_refused(tmp_path: Path) -> None:
    module = make_module(toy_sequences())
    path = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    with pytest.raises(ValueError, match="does not fit this encoder"):
        HistoryEncoder(20, 3, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64,
                       init_from=str(path))
    with pytest.raises(ValueError, match="no such file"):
        HistoryEncoder(12, 3, init_from=str(tmp_path / "missing.ckpt"))


def test_pretraining_needs_logged_sequences() -> None:
    encoder = HistoryEncoder(12, 3)
    with pytest.raises(ValueError, match="learns from logged sequences"):
        SequencePretrainModule(encoder, lambda **_: object())
    with pytest.raises(ValueError, match="mask_prob"):
        make_module(toy_sequences(), mask_prob=1.0)
    with pytest.raises(ValueError, match="rating_weight"):
        make_module(toy_sequences(), rating_weight=-1.0)


def ml100k_run(tmp_path: Path) -> list[str]:
    """ML-100K from the test data, a shorter taste-model fit, larger ranking chunks."""
    return [*ml100k_data(tmp_path / "cache"), "env.fit_epochs=50",
            "evaluation.ranking.chunk_size=1024"]


@needs_ml100k
def test_pretrain_then_rl_from_the_checkpoint_the_readme_recipe(tmp_path: Path, monkeypatch,
                                                                capsys) -> None:
    """Both steps through the entry function: pretraining writes rankings and a checkpoint; an RL
    run starts from it and reports the same ranking protocols next to its online return. The
    documented per-target breakdown (bench/ranking_by_target.py) of that checkpoint agrees with
    the run's own test-item numbers."""
    data = ml100k_run(tmp_path)
    pretrain_dir = tmp_path / "pretrain"
    assert run_recrl_in_process(pretrain_dir, "env=ml100k", "algo=pretrain", "debug=smoke",
                                *data) is None
    results = read_results(pretrain_dir)
    ranking = results["offline_ranking"]
    protocols = {"full", "sampled_uniform_100", "sampled_popularity_100"}
    assert set(ranking["agent"]) == set(ranking["popular"]) == set(ranking["protocols"]) == protocols
    assert set(ranking["agent"]["full"]) == {"HR@10", "NDCG@10", "HR@20", "NDCG@20"}
    # Most-popular's numbers on ML-100K (recrl/ranking.py's tests pin them more tightly).
    assert 0.06 < ranking["popular"]["full"]["HR@10"] < 0.11
    assert results["optimizer_steps"] == 20
    checkpoint = Path(results["checkpoint"])
    assert checkpoint.is_file()
    with open(pretrain_dir / "metrics.csv") as f:
        assert "val/HR@10" in f.readline()

    monkeypatch.setattr(sys, "argv", ["ranking_by_target.py", str(checkpoint), "--override",
                                      "env=ml100k", "debug=smoke", *data])
    load_bench("ranking_by_target").main()
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()
            if line.startswith(f"| {checkpoint} |")]
    assert [row[2].strip() for row in rows] == ["all 943", "trained on (849)", "held out (94)"]
    test_cell = rows[0][4].split()  # "<model> / <popular> (<ratio>x)" on the test item
    assert float(test_cell[0]) == round(ranking["agent"]["full"]["HR@10"], 3)
    assert float(test_cell[2]) == round(ranking["popular"]["full"]["HR@10"], 3)
    # A checkpoint that trained on the validation items shows no number where it did.
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["hyper_parameters"]["train_on_validation_item"] = True
    torch.save(saved, tmp_path / "with_valid.ckpt")
    monkeypatch.setattr(sys, "argv", ["ranking_by_target.py", str(tmp_path / "with_valid.ckpt"),
                                      "--override", "env=ml100k", "debug=smoke", *data])
    load_bench("ranking_by_target").main()
    valid_cells = [line.split("|")[3].strip() for line in capsys.readouterr().out.splitlines()
                   if "with_valid.ckpt" in line]
    assert valid_cells[:2] == ["(trained on)", "(trained on)"]
    assert valid_cells[2][0].isdigit()  # the held-out users: never trained on

    rl_dir = tmp_path / "ppo"
    assert run_recrl_in_process(rl_dir, "env=ml100k", "algo=ppo", "debug=smoke", *data,
                                f"encoder.init_from={checkpoint}") is None
    results = read_results(rl_dir)
    assert {"random", "popular", "popular_log", "oracle_myopic"} == set(results["baselines"])
    assert set(results["offline_ranking"]["agent"]) == protocols

    # The documented heads-as-policies table (bench/pretrained_policy.py) on the same test users:
    # its random row is the run's own random baseline, number for number.
    rl_overrides = ["--override", "env=ml100k", "debug=smoke", *data]
    monkeypatch.setattr(sys, "argv", ["pretrained_policy.py", str(checkpoint), "--users", "32",
                                      "--scales", "4", *rl_overrides])
    load_bench("pretrained_policy").main()
    out = capsys.readouterr().out
    assert "(head: rating)" in out
    rows = {line.split("|")[1].strip(): line.split("|")[2].split() for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| policy")}
    assert list(rows) == ["random", "head, greedy", "head, sampled at scale 4"]
    assert float(rows["random"][0]) == round(results["baselines"]["random"]["return_mean"], 1)

    # The fixed most-popular (bench/fixed_popular.py) against this run, user by user: the mean
    # paired gap is the difference of the two means; a run on other users is refused.
    monkeypatch.setattr(sys, "argv", ["fixed_popular.py", str(rl_dir), "--frames", "512",
                                      *rl_overrides])
    load_bench("fixed_popular").main()
    row = capsys.readouterr().out.splitlines()[-1].split("|")
    assert row[1].strip() == "512"
    fixed_mean, gap = float(row[2].split()[0]), float(row[3].split()[0])
    assert gap == pytest.approx(results["agent"]["return_mean"] - fixed_mean, abs=0.11)
    monkeypatch.setattr(sys, "argv", ["fixed_popular.py", str(rl_dir), "--frames", "512",
                                      *rl_overrides, "evaluation.seed=7"])
    with pytest.raises(SystemExit, match="other test users .*seed"):
        load_bench("fixed_popular").main()


@needs_ml100k
@pytest.mark.parametrize("hardware", [
    "cpu", pytest.param("ddp_cpu", marks=[pytest.mark.slow, pytest.mark.e2e])])
def test_pretraining_with_select_best_ranks_and_saves_its_best_validation_weights(
        tmp_path: Path, monkeypatch, capsys, hardware: str) -> None:
    """evaluation.select=best: the final rankings and best.ckpt (the results' checkpoint) are
    the weights of the highest validation HR@10; last.ckpt stays the final state to resume.
    Also with two DDP processes (gloo), where saving best.ckpt is a collective."""
    data = ml100k_run(tmp_path)
    run_dir = tmp_path / "pretrain"
    # A rate high enough that validation HR@10 is not monotone over the 30 steps.
    overrides = ["env=ml100k", "algo=pretrain", "debug=smoke", *data, "trainer.max_steps=30",
                 "evaluation.every_n_steps=5", "evaluation.num_users=943", "algo.lr=0.01",
                 "evaluation.select=best"]
    if hardware == "cpu":
        assert run_recrl_in_process(run_dir, *overrides) is None
    else:
        # Lightning re-runs the command line for the second process: a real subprocess.
        proc = run_recrl(run_dir, *overrides, "hardware=ddp_cpu", "trainer.devices=2",
                         timeout=400)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert sorted(p.name for p in run_dir.glob("run*.log")) == ["run.log", "run.rank1.log"]
        assert len(list(run_dir.parent.rglob("results.json"))) == 1
    results = read_results(run_dir)
    with open(run_dir / "metrics.csv") as f:
        curve = [(int(row["step"]), float(row["val/HR@10"])) for row in csv.DictReader(f)
                 if row.get("val/HR@10")]
    assert [step for step, _ in curve] == [0, 5, 10, 15, 20, 25, 30]
    best_step, best_hr = max(curve, key=lambda point: point[1])  # the first of equal maxima
    assert best_step < 30  # this run peaks before its end: the selection must load other weights
    assert results["selected_weights"] == {"rule": "best", "step": best_step}
    assert results["validation"]["step"] == best_step
    assert results["validation"]["HR@10"] == pytest.approx(best_hr)
    checkpoint = Path(results["checkpoint"])
    assert checkpoint == run_dir / "checkpoints" / "best.ckpt"
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)
    assert last["global_step"] == 30 and "optimizer_states" in last
    # best.ckpt holds the selected weights, and the run ranked its test items with them: the
    # per-target breakdown of best.ckpt ranks all 943 validation items as the selected
    # evaluation did, and the test items as the run's own results.
    monkeypatch.setattr(sys, "argv", ["ranking_by_target.py", str(checkpoint), "--override",
                                      "env=ml100k", "debug=smoke", *data])
    load_bench("ranking_by_target").main()
    row = next(line.split("|") for line in capsys.readouterr().out.splitlines()
               if line.startswith(f"| {checkpoint} | all 943"))
    assert float(row[3].split()[0]) == round(best_hr, 3)
    assert float(row[4].split()[0]) == round(results["offline_ranking"]["agent"]["full"]["HR@10"], 3)


@needs_ml100k
def test_causal_pretraining_through_the_entry_point_and_rl_from_it(tmp_path: Path, monkeypatch,
                                                                   capsys) -> None:
    """The documented SASRec-style command (docs/pretraining.md): it ranks and writes a checkpoint that records its
    objective (bench/ranking_by_target.py reads it and ranks as the run did); an RL run from it
    without encoder.causal=true ends with the one-line fix, and with it runs."""
    data = ml100k_run(tmp_path)
    pretrain_dir = tmp_path / "pretrain"
    assert run_recrl_in_process(pretrain_dir, "env=ml100k", "algo=pretrain", "debug=smoke",
                                "algo.objective=causal", "encoder.causal=true", *data) is None
    results = read_results(pretrain_dir)
    assert results["optimizer_steps"] == 20
    assert results["offline_ranking"]["agent"]["full"]["HR@10"] > 0
    checkpoint = Path(results["checkpoint"])
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["hyper_parameters"]["objective"] == "causal"
    assert not any(key.startswith(("mask_token", "cloze_head")) for key in saved["state_dict"])
    monkeypatch.setattr(sys, "argv", ["ranking_by_target.py", str(checkpoint), "--override",
                                      "env=ml100k", "debug=smoke", *data])
    load_bench("ranking_by_target").main()
    row = next(line.split("|") for line in capsys.readouterr().out.splitlines()
               if line.startswith(f"| {checkpoint} | all"))
    agent_hr = float(row[4].split()[0])  # "<model> / <popular> (<ratio>x)" on the test item
    assert agent_hr == round(results["offline_ranking"]["agent"]["full"]["HR@10"], 3)

    error = run_recrl_in_process(tmp_path / "ppo", "env=ml100k", "algo=ppo", "debug=smoke",
                                 *data, f"encoder.init_from={checkpoint}")
    assert error is not None and "set encoder.causal=true" in error
    assert "\n" not in error.strip()
    # The documented second command: with the setting, PPO starts from the checkpoint and runs.
    rl_dir = tmp_path / "ppo_causal"
    assert run_recrl_in_process(rl_dir, "env=ml100k", "algo=ppo", "debug=smoke", *data,
                                "encoder.causal=true", f"encoder.init_from={checkpoint}") is None
    results = read_results(rl_dir)
    assert "agent" in results and "full" in results["offline_ranking"]["agent"]
    # The heads-as-policies script reads the attention from the checkpoint: no override needed.
    monkeypatch.setattr(sys, "argv", ["pretrained_policy.py", str(checkpoint), "--users", "8",
                                      "--scales", "--override", "env=ml100k", "debug=smoke",
                                      *data])
    load_bench("pretrained_policy").main()
    assert "head, greedy" in capsys.readouterr().out


@needs_ml100k
def test_a_nan_in_pretraining_stops_at_the_guard_with_the_last_good_state(tmp_path: Path) -> None:
    """Pretraining takes the same guarded path as the RL algorithms: one line naming the loss
    and the step, a last_good.ckpt of the step before, FAILED, and no results."""
    message = run_recrl_in_process(
        tmp_path, "env=ml100k", f"data.path={ML100K}", "algo=pretrain", "debug=smoke",
        "callbacks.non_finite_guard.inject_nan_at_step=3",
    )
    assert message is not None and message.startswith("recrl: training stopped: train/")
    assert "is nan at optimiser step 3" in message
    last_good = torch.load(tmp_path / "checkpoints" / "last_good.ckpt", weights_only=True)
    assert last_good["global_step"] == 2
    assert (tmp_path / "FAILED").read_text().startswith("non-finite:")
    assert not (tmp_path / "results.json").exists()
