"""SlateQ (lightning_modules/slateq.py) and list-wise PPO: the decomposition by hand, the loss's
target, the greedy and exploring slate policies, learning on RecSim's slate benchmark."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs.utils import ExplorationType, set_exploration_type

from lightning_modules.ppo import PPOModule
from lightning_modules.slateq import (
    CHOICE_LOGIT, ITEM_VALUE, SlateExploration, SlatePolicy, SlateQLoss, SlateQModule,
    slate_scores, slate_value,
)
from recrl.distributions import PlackettLuce
from recrl.observation import HISTORY_KEYS
from tests.conftest import assert_beats_random, small_module

SLATES = {"slate_size": 2, "num_candidates": 10}


def test_slate_value_is_the_choice_weighted_mean_of_item_values() -> None:
    # Choice logits relative to no click: items 1, 2 -> weights e^1, e^0 = 1; no click: 1.
    item_value = torch.tensor([[0.5, 2.0, 4.0, 9.0]])
    choice_logit = torch.tensor([[0.0, 1.0, 0.0, 5.0]])
    e = math.e
    expected = (1 * 0.5 + e * 2.0 + 1 * 4.0) / (1 + e + 1)
    assert slate_value(item_value, choice_logit, torch.tensor([[1, 2]])).item() == (
        pytest.approx(expected))
    # The top-k rule ranks by v * Q; a masked item never appears.
    mask = torch.tensor([[False, True, True, False]])
    scores = slate_scores(item_value, choice_logit, mask)
    assert scores[0, 3] == -math.inf and scores[0, 1] == pytest.approx(e * 2.0)


class ConstantNetwork(nn.Module):
    """Item values and choice logits that do not depend on the history: learnable tables."""

    def __init__(self, values: list[float], logits: list[float]) -> None:
        super().__init__()
        self.values = nn.Parameter(torch.tensor(values))
        self.logits = nn.Parameter(torch.tensor(logits))

    def forward(self, history, response, watch_time):
        shape = (*history.shape[:-1], self.values.numel())
        return self.values.expand(shape), self.logits.expand(shape)


def test_the_loss_trains_the_chosen_items_value_towards_its_slateq_target() -> None:
    values, logits = [0.5, 2.0, 4.0, 1.0, 3.0], [0.0, 0.0, 1.0, 0.0, 0.0]
    network = TensorDictModule(ConstantNetwork(values, logits), in_keys=HISTORY_KEYS,
                               out_keys=[ITEM_VALUE, CHOICE_LOGIT])
    loss = SlateQLoss(network, gamma=0.9, choice_loss_weight=1.0, loss_function="l2")
    obs = {key: torch.zeros(2, 3, dtype=torch.float32 if key.endswith("time") else torch.long)
           for key in HISTORY_KEYS}
    next_mask = torch.tensor([[False, True, True, True, False], [False, True, False, False, True]])
    batch = TensorDict({
        **obs, "action": torch.tensor([[1, 3], [2, 4]]), "chosen": torch.tensor([1, -1]),
        "next": {**obs, "action_mask": next_mask, "reward": torch.tensor([[1.0], [0.0]]),
                 "terminated": torch.tensor([[False], [True]])},
    }, batch_size=[2])
    out = loss(batch)
    # Row 0 chose item 3 (value 1.0). Next greedy slate of 2 by v * Q among {1, 2, 3}: item 2
    # (e * 4.0), then item 1 (2.0); its value under the target (equal to the online) network:
    e = math.e
    next_value = (0.5 + 2.0 + e * 4.0) / (1 + 1 + e)
    target0 = 1.0 + 0.9 * next_value
    # Row 1 chose nothing (value of item 0: 0.5), terminal: target 0.
    expected = ((1.0 - target0) ** 2 + (0.5 - 0.0) ** 2) / 2
    assert out["loss_value"].item() == pytest.approx(expected, rel=1e-5)
    # Choice cross-entropy over [none, slate]: row 0 chose position 1, row 1 nothing.
    log_z = [math.log(1 + 1 + 1), math.log(1 + e + 1)]
    expected_choice = ((log_z[0] - 0.0) + (log_z[1] - 0.0)) / 2
    assert out["loss_choice"].item() == pytest.approx(expected_choice, rel=1e-5)
    out["loss"].backward()
    grad = network.module.values.grad
    assert grad[2] == 0 and grad[4] == 0  # shown, not chosen: no TD target of their own
    assert grad[3] != 0 and grad[0] != 0


def test_greedy_slates_explore_only_when_collecting() -> None:
    network = TensorDictModule(ConstantNetwork([0.0, 1.0, 3.0, 2.0, 5.0], [0.0] * 5),
                               in_keys=HISTORY_KEYS, out_keys=[ITEM_VALUE, CHOICE_LOGIT])
    policy = SlatePolicy(network, slate_size=2)
    mask = torch.tensor([[False, True, True, True, False]]).expand(500, 5)
    obs = TensorDict({key: torch.zeros(500, 3, dtype=torch.long) for key in HISTORY_KEYS},
                     batch_size=[500]).set("action_mask", mask)
    greedy = policy(obs.clone())["action"]
    assert (greedy == torch.tensor([2, 3])).all()  # item 4 (value 5.0) is masked
    exploration = SlateExploration(eps_init=0.5, eps_end=0.5, annealing_num_steps=1)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        assert torch.equal(exploration(policy(obs.clone()))["action"], greedy)
    with set_exploration_type(ExplorationType.RANDOM):
        explored = exploration(policy(obs.clone()))["action"]
    assert mask.gather(1, explored).all() and (explored[:, 0] != explored[:, 1]).all()
    share_changed = (explored != greedy).any(-1).float().mean().item()
    assert 0.5 * 5 / 6 - 0.07 < share_changed < 0.5 * 5 / 6 + 0.07  # 1 of 6 random slates is greedy


def test_epsilon_anneals_linearly_and_stops_at_its_end() -> None:
    exploration = SlateExploration(eps_init=1.0, eps_end=0.1, annealing_num_steps=100)
    exploration.step(50)
    assert exploration.eps.item() == pytest.approx(0.55)
    exploration.step(500)
    assert exploration.eps.item() == pytest.approx(0.1)


def train(module, steps: int) -> None:
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module)


@pytest.mark.slow
def test_slateq_learns_to_beat_random_slates() -> None:
    L.seed_everything(0, verbose=False)
    module = small_module(
        SlateQModule, env_kwargs=SLATES, num_envs=32, frames_per_batch=256, updates_per_batch=4,
        batch_size=64, learning_starts=500, eps_annealing_frames=8_000, lr=2e-3, n_steps=4)
    train(module, 160)
    assert_beats_random(module)


@pytest.mark.slow
def test_listwise_ppo_learns_to_beat_random_slates() -> None:
    L.seed_everything(0, verbose=False)
    module = small_module(PPOModule, env_kwargs=SLATES, num_envs=64, frames_per_batch=2048,
                          ppo_epochs=1, minibatch_size=512, lr=3e-3, gamma=0.99)
    assert isinstance(module.policy_head.get_dist(
        module.state_encoder(module.make_env(2, seed=0).reset())), PlackettLuce)
    train(module, 100)  # 51k env steps: 166.6 +- 3.4 against random's 153.1 +- 1.5
    assert_beats_random(module)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["recsim_slateq", "recsim_slate_ppo"])
def test_a_slate_run_reports_list_metrics_for_every_policy(tmp_path, experiment: str) -> None:
    """RecSim's slate benchmark through the run's entry point: results.json holds the list
    metrics of the agent and of each slate baseline."""
    from tests.conftest import read_results, run_recrl_in_process

    run_dir = tmp_path / "run"
    assert run_recrl_in_process(run_dir, f"experiment={experiment}", "debug=smoke",
                                "env.time_budget=30", "env.num_candidates=10") is None
    results = read_results(run_dir)
    policies = {"agent": results["agent"], **results["baselines"]}
    assert set(policies) == {"agent", "random", "popular", "oracle_myopic"}
    for name, metrics in policies.items():
        assert metrics["slate_size"] == 2, name
        assert len(metrics["click_positions"]) == 2
        assert sum(metrics["click_positions"]) == pytest.approx(1.0)
        assert 0 < metrics["slate_ndcg"] <= 1 and 0 <= metrics["slate_ild"] < 1
    assert policies["oracle_myopic"]["slate_ndcg"] == pytest.approx(1.0)
