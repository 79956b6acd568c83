"""Offline RL (lightning_modules/offline.py): the log's minibatches, training without a single
simulator step, behaviour cloning of a known behaviour, every algorithm's loss on a tiny log,
IQL's shared encoder states, the refusal of an env without a log, a whole run on a hand-made
Coat world and its exact resume."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType, set_exploration_type

from lightning_modules.offline import (
    BCModule, BCQModule, CQLModule, CRRModule, IQLModule, LoggedBatches, OfflineRLModule,
    likely_actions,
)
from recrl.encoders import HistoryEncoder
from recrl.envs import CoatEnv, InterestEvolutionEnv
from recrl.envs.base import RecEnv
from tests.conftest import read_results, run_recrl_in_process
from tests.test_env_coat import write_world

ALGORITHMS = [CQLModule, BCQModule, CRRModule, IQLModule]


class LowestItemLogEnv(InterestEvolutionEnv):
    """A synthetic env with a log whose behaviour is a known function of the history: the
    lowest item id not in the visible window (the env masks the window's items). With a window
    of 4 the log cycles 1 2 3 4 5 1 2 ...: the logged action is the item after the last one."""

    def logged_transitions(self, seed: int = 0) -> TensorDict:
        env = LowestItemLogEnv(16, seed=seed, num_items=self.num_items,
                               history_length=self.history_length, time_budget=40.0)
        lowest = TensorDictModule(lambda mask: mask.float().argmax(-1), in_keys=["action_mask"],
                                  out_keys=["action"])
        return env.rollout(24, lowest, break_when_any_done=False).reshape(-1)


def lowest_item_factory():
    return partial(LowestItemLogEnv, num_items=12, history_length=4)


def coat_factory(tmp_path: Path):
    folder = write_world(tmp_path / "coat")
    return partial(CoatEnv, path=str(folder), history_length=3, leave_threshold=2.0,
                   leave_window=2)


def small_encoder(num_items: int, history_length: int) -> HistoryEncoder:
    torch.manual_seed(0)
    return HistoryEncoder(num_items, history_length, hidden_size=32, num_layers=1, num_heads=2,
                          intermediate_size=64)


def offline_module(module_class, env_factory, num_items: int, history_length: int,
                   **kwargs) -> OfflineRLModule:
    return module_class(small_encoder(num_items, history_length), env_factory, **kwargs)


def train(module: OfflineRLModule, steps: int, lr: float = 3e-3) -> list[dict[str, float]]:
    """``steps`` optimiser steps on the module's own minibatches (no Trainer), each step's
    loss terms."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)
    batches = LoggedBatches(module.transitions, module.batch_size, seed=0)
    history = []
    for step in range(steps):
        losses = module.losses(batches.batch(step))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
        if module.target_updater is not None:
            module.target_updater.step()
        history.append({name: value.item() for name, value in losses.items()})
    return history


# -- the log's minibatches --------------------------------------------------------------------
def test_batches_are_seeded_passes_over_the_log_and_depend_only_on_the_step() -> None:
    log = TensorDict({"x": torch.arange(10)}, batch_size=[10])
    batches = LoggedBatches(log, batch_size=4, seed=3)
    first_passes = torch.cat([batches.batch(step)["x"] for step in range(5)])  # 20 = 2 passes
    assert sorted(first_passes[:10].tolist()) == list(range(10))
    assert sorted(first_passes[10:].tolist()) == list(range(10))
    assert first_passes[:10].tolist() != first_passes[10:].tolist()  # a new order per pass
    # Batch k alone, from a fresh stream (a resumed run): the same transitions.
    again = LoggedBatches(log, batch_size=4, seed=3)
    assert again.batch(3)["x"].tolist() == batches.batch(3)["x"].tolist()
    resumed = iter(LoggedBatches(log, batch_size=4, seed=3, start_step=lambda: 3))
    assert next(resumed)["x"].tolist() == batches.batch(3)["x"].tolist()
    assert LoggedBatches(log, 4, seed=4).batch(0)["x"].tolist() != batches.batch(0)["x"].tolist()
    assert LoggedBatches(log, 4, 3, rank=1).batch(0)["x"].tolist() != batches.batch(0)["x"].tolist()
    # A log smaller than a batch: whole passes, each transition once per pass.
    big = LoggedBatches(log, batch_size=25, seed=0).batch(0)["x"]
    assert torch.bincount(big[:20], minlength=10).tolist() == [2] * 10


def test_bcq_filter_keeps_actions_likely_enough_under_behaviour_cloning() -> None:
    logits = torch.log(torch.tensor([[0.0, 0.5, 0.3, 0.15, 0.05]]))
    mask = torch.tensor([[False, True, True, True, True]])
    assert likely_actions(logits, mask, 1.0).tolist() == [[False, True, False, False, False]]
    assert likely_actions(logits, mask, 0.4).tolist() == [[False, True, True, False, False]]
    assert likely_actions(logits, mask, 0.0).tolist() == mask.tolist()
    hidden = mask.clone()
    hidden[0, 1] = False  # the most likely item is masked: the next one leads
    assert likely_actions(logits, hidden, 0.4).tolist() == [[False, False, True, True, False]]


# -- training without the simulator -----------------------------------------------------------
def test_training_takes_no_simulator_step_and_popular_ranks_the_logged_clicks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = offline_module(CQLModule, coat_factory(tmp_path), num_items=4, history_length=3,
                            batch_size=4)
    # The hand-made log: user 0 rated items 1 (5) and 3 (3), user 1 items 2 (5) and 4 (4); a
    # click is a rating >= 4.
    assert module.transitions.numel() == 4
    assert module.training_popularity().tolist() == [0, 1, 1, 0, 1]
    steps = []

    def no_step(self, tensordict):
        steps.append(type(self).__name__)
        raise AssertionError("an offline algorithm stepped an environment while training")

    def no_collector(*args, **kwargs):
        raise AssertionError("an offline algorithm built a collector")

    monkeypatch.setattr(RecEnv, "_step", no_step)
    monkeypatch.setattr(RecEnv, "_reset", no_step)
    monkeypatch.setattr("torchrl.collectors.Collector.__init__", no_collector)
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0)
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module)
    assert trainer.global_step == 6 and steps == []
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert module.progress() == {"transitions_sampled": 24, "logged_transitions": 4}


def test_behaviour_cloning_recovers_a_deterministic_logged_behaviour() -> None:
    module = offline_module(BCModule, lowest_item_factory(), num_items=12, history_length=4,
                            batch_size=64)
    log = module.transitions
    expected = log["action_mask"].float().argmax(-1)
    assert torch.equal(log["action"], expected)  # the behaviour is a function of the history
    before = (module.greedy_policy(log.select("history", "history_response",
                                              "history_watch_time", "action_mask").clone())
              ["action"] == expected).float().mean()
    history = train(module, steps=150)
    assert history[-1]["loss"] < 0.3 * history[0]["loss"]
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        observation = log.select("history", "history_response", "history_watch_time",
                                 "action_mask").clone()
        greedy = module.greedy_policy(observation)["action"]
    accuracy = (greedy == expected).float().mean().item()
    assert accuracy >= 0.95, (before.item(), accuracy)


@pytest.mark.parametrize("module_class", ALGORITHMS, ids=lambda c: c.algo_name)
def test_each_algorithm_s_losses_are_finite_and_decrease_on_a_tiny_log(module_class) -> None:
    module = offline_module(module_class, lowest_item_factory(), num_items=12, history_length=4,
                            batch_size=64, repeat_bias=True)
    history = train(module, steps=80)
    for losses in history:
        assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()), losses
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < first, (module_class.algo_name, history[0], history[-1])
    # The greedy policy picks allowed items only.
    env = module.make_env(8, seed=1, split="test")
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        td = module.greedy_policy(env.reset())
    assert td["action_mask"].gather(-1, td["action"][:, None]).all()


def test_iql_encodes_each_state_once_with_the_same_losses_and_gradients(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """TorchRL's IQL loss calls actor, Q (online and target) and V separately: 7 encoder passes;
    `SharedStates` makes them 3 (online s, target s, online s') and changes nothing else."""
    module = offline_module(IQLModule, lowest_item_factory(), num_items=12, history_length=4,
                            batch_size=32, repeat_bias=True)
    train(module, steps=3)  # the target network now differs from the online one
    batch = LoggedBatches(module.transitions, 32, seed=1).batch(0)
    passes = []
    encode = HistoryEncoder.forward
    monkeypatch.setattr(HistoryEncoder, "forward",
                        lambda self, *args: passes.append(1) or encode(self, *args))

    def losses_and_gradients(shared: bool) -> tuple[list[float], list[torch.Tensor]]:
        module.zero_grad()
        passes.clear()
        if shared:
            losses = module.losses(batch.clone())
        else:
            out = module.loss_module(batch.clone())
            losses = {name: out[name] for name in ("loss_actor", "loss_qvalue", "loss_value")}
            losses["loss"] = sum(losses.values())
        losses["loss"].backward()
        return ([value.item() for value in losses.values()],
                [p.grad.clone() for p in module.parameters() if p.grad is not None])

    shared_losses, shared_grads = losses_and_gradients(shared=True)
    assert len(passes) == 3
    losses, grads = losses_and_gradients(shared=False)
    assert len(passes) == 7
    assert shared_losses == pytest.approx(losses, rel=1e-6)
    assert len(shared_grads) == len(grads)
    for shared_grad, grad in zip(shared_grads, grads):
        torch.testing.assert_close(shared_grad, grad, rtol=1e-4, atol=1e-6)


# -- the run --------------------------------------------------------------------------------
def test_an_env_without_a_log_is_refused_in_one_line(tmp_path: Path) -> None:
    message = run_recrl_in_process(tmp_path / "run", "algo=cql", "debug=smoke")
    assert message == ("recrl: configuration error: algo=cql trains from logged transitions; "
                       "env=synthetic has none: use env=coat")


def test_a_run_on_a_hand_made_coat_world_writes_the_agent_and_the_baselines(
        tmp_path: Path) -> None:
    world = write_world(tmp_path / "coat")
    run_dir = tmp_path / "run"
    message = run_recrl_in_process(
        run_dir, "env=coat", f"env.path={world}", "algo=crr", "trainer.max_steps=6",
        "trainer.enable_progress_bar=false", "algo.batch_size=8", "evaluation.every_n_steps=3",
        "evaluation.num_users=4", "evaluation.final_num_users=8", "checkpoint.every_n_steps=3",
    )
    assert message is None
    results = read_results(run_dir)
    assert results["optimizer_steps"] == 6
    assert results["transitions_sampled"] == 48 and results["logged_transitions"] == 4
    assert results["agent"]["num_users"] == 8
    assert {"random", "popular"} <= set(results["baselines"])
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_a_resumed_run_trains_on_the_batches_of_the_uninterrupted_one(tmp_path: Path) -> None:
    """3 steps, then ``ckpt_path=last`` to step 6, ends with the weights of 6 steps in one go:
    a batch depends only on its step (here batches of 3 from a log of 4 cross passes)."""
    world = write_world(tmp_path / "coat")
    common = ["env=coat", f"env.path={world}", "algo=cql", "algo.anneal_lr=false",
              "algo.batch_size=3", "trainer.enable_progress_bar=false",
              "evaluation.every_n_steps=2", "evaluation.num_users=4",
              "evaluation.final_num_users=8", "checkpoint.every_n_steps=2"]
    assert run_recrl_in_process(tmp_path / "straight", *common, "trainer.max_steps=6") is None
    assert run_recrl_in_process(tmp_path / "resumed", *common, "trainer.max_steps=3") is None
    assert run_recrl_in_process(tmp_path / "resumed", *common, "trainer.max_steps=6",
                                "ckpt_path=last") is None
    straight, resumed = (torch.load(tmp_path / name / "checkpoints" / "last.ckpt",
                                    weights_only=False)["state_dict"]
                         for name in ("straight", "resumed"))
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    agent = read_results(tmp_path / "straight")["agent"]
    assert read_results(tmp_path / "resumed")["agent"] == agent
