"""docs/extending.md's worked example: its code is the repository's, it trains through the real
entry point, its returns are the hand-computed ones, and it learns; and the run asks a module
what it reports instead of assuming an online learner."""

from __future__ import annotations

import json
import re
from functools import partial
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from tensordict.nn import TensorDictModule
from torchrl.modules import QValueActor

from lightning_modules.policy import PolicyModule
from lightning_modules.reinforce import ReinforceModule
from recrl.baselines import RandomRecommender
from recrl.encoders import HistoryEncoder, HistoryScorer
from recrl.envs import InterestEvolutionEnv
from recrl.evaluation import evaluate_policy
from recrl.observation import HISTORY_KEYS
from recrl.results import final_evaluation, optimized_metric
from tests.conftest import REPO_ROOT, SHORT_SESSIONS, run_recrl_in_process, small_module

DOC = REPO_ROOT / "docs" / "extending.md"


def compose_config(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=list(overrides))


def documented_files() -> dict[str, str]:
    """``<!-- file: path -->`` followed by a fenced block: path -> the block's text."""
    pattern = re.compile(r"<!-- file: (\S+) -->\n```\w*\n(.*?)\n```", re.DOTALL)
    return dict(pattern.findall(DOC.read_text()))


def test_the_documented_example_is_the_code_in_the_repository() -> None:
    files = documented_files()
    assert set(files) == {"lightning_modules/reinforce.py", "conf/algo/reinforce.yaml",
                          "conf/debug_algo/smoke_reinforce.yaml"}
    for path, text in files.items():
        assert text == (REPO_ROOT / path).read_text().rstrip(), f"docs/extending.md's {path} is stale"


def make_module(num_items: int = 60, history_length: int = 5, **kwargs) -> ReinforceModule:
    return small_module(ReinforceModule, num_items, history_length, **kwargs)


def test_returns_and_advantages_are_the_hand_computed_ones() -> None:
    """Two users, three steps; the baseline is the constant 0.5 (weights zeroed), so
    G_t = s r_t + gamma G_t+1 (bootstrapped with 0.5 after the last step unless the user left)
    and A_t = G_t - 0.5, normalised over the rollout, with s the reward scale."""
    gamma, scale = 0.9, 0.1
    module = make_module(gamma=gamma, reward_scale=scale, num_envs=2, frames_per_batch=6)
    head = module.critic[1].module
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(0.5)
    env = module.make_env(2, seed=0)
    rollout = env.rollout(3, policy=RandomRecommender(seed=0), break_when_any_done=False)  # [2, 3]
    reward = rollout["next", "reward"].squeeze(-1) * scale  # [2, 3]
    terminated = rollout["next", "terminated"].squeeze(-1)
    done = rollout["next", "done"].squeeze(-1)
    expected = torch.zeros(2, 3)
    for user in range(2):
        after = 0.5  # V of the observation after the rollout's last step
        for t in reversed(range(3)):
            if done[user, t]:
                after = 0.5  # a new session starts after this step: bootstrap from its V
            after = reward[user, t] + gamma * (~terminated[user, t]) * after
            expected[user, t] = after
    (batch,) = module.rollout_to_batches(rollout)
    torch.testing.assert_close(batch["value_target"].reshape(2, 3), expected)
    advantage = expected - 0.5
    advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    torch.testing.assert_close(batch["advantage"].reshape(2, 3), advantage)
    assert "state" not in batch.keys()  # the encoder's states are not carried to the loss


@pytest.mark.slow
def test_reinforce_learns_to_beat_random() -> None:
    """Measured: 203 +- 7 against 137 +- 1 (80 one-rollout updates, ~11 s on 2 threads; 150
    updates gave 202 +- 6)."""
    L.seed_everything(0, verbose=False)
    module = make_module(num_envs=32, frames_per_batch=1024, lr=3e-3, gamma=0.99)
    trainer = L.Trainer(max_steps=80, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False)
    trainer.fit(module)
    module.eval()
    agent = evaluate_policy(module.make_env(300, seed=123), module.greedy_policy)
    random = evaluate_policy(module.make_env(300, seed=123), RandomRecommender(seed=0))
    assert agent["return_mean"] - agent["return_ci95"] > random["return_mean"] + random["return_ci95"]


@pytest.mark.slow
def test_a_new_algorithm_runs_through_the_entry_point(tmp_path: Path) -> None:
    """Registered by its yaml alone: trained, validated, compared with every baseline, and
    the sweep objective is the one its config names."""
    message = run_recrl_in_process(tmp_path, "algo=reinforce", "debug=smoke", SHORT_SESSIONS)
    assert message is None
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["baselines"]) == {"random", "popular", "oracle_myopic"}
    # One 32-frame rollout per optimiser step (Lightning fetches the next batch ahead of time).
    assert results["frames"] in (20 * 32, 21 * 32)
    assert results["selected_weights"]["frames"] == results["frames"]
    objective = optimized_metric(results, compose_config("algo=reinforce").algo.optimized_metric)
    assert objective == results["selected_weights"]["val_return"]
    assert (tmp_path / "test_returns.json").is_file()


class ScoresFromLogs(PolicyModule):
    """A policy module that never collects (an offline learner's shape): greedy on its scores."""

    def __init__(self, encoder: HistoryEncoder, env_factory) -> None:
        super().__init__(encoder, env_factory)
        spec = self.make_env(1, seed=0).action_spec_unbatched
        self.policy = QValueActor(
            TensorDictModule(HistoryScorer(encoder), in_keys=HISTORY_KEYS,
                             out_keys=["action_value"]),
            spec=spec, action_space="categorical", action_mask_key="action_mask")

    @property
    def greedy_policy(self) -> QValueActor:
        return self.policy


def test_a_module_that_saw_no_clicks_gets_no_popular_baseline() -> None:
    """A most-popular list of zero counts would be an arbitrary item order under that name."""
    env_factory = partial(InterestEvolutionEnv, num_items=30, history_length=4)
    encoder = HistoryEncoder(30, 4, hidden_size=16, num_layers=1, num_heads=2,
                             intermediate_size=32, item_features=env_factory(num_users=1).item_features)
    module = ScoresFromLogs(encoder, env_factory)
    cfg = OmegaConf.create({"evaluation": {"final_num_users": 8, "seed": 1, "max_steps": 2000,
                                           "select": "last"}})
    validation = type("Validation", (), {"curve": [{"step": 0, "return_mean": 1.0,
                                                    "return_ci95": 0.0}], "best": None})()
    results, returns = final_evaluation(module, cfg, None, validation)
    assert set(results["baselines"]) == {"random", "oracle_myopic"}
    assert results["selected_weights"] == {"rule": "last", "step": 0, "val_return": 1.0,
                                           "val_return_ci95": 0.0}
    assert len(returns["agent"]) == 8
