"""PPO: masking, GAE against hand-computed numbers, the on-policy data flow, and learning."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from tensordict import TensorDict
from torchrl.envs.utils import ExplorationType, set_exploration_type

from lightning_modules.ppo import PPOModule
from tests.conftest import assert_beats_random, masked_observation, small_module


def make_module(num_items: int = 60, history_length: int = 5, env_kwargs: dict | None = None,
                **kwargs) -> PPOModule:
    return small_module(PPOModule, num_items, history_length, env_kwargs,
                        **{"anneal_lr": False, **kwargs})


def fit(module: PPOModule, max_steps: int) -> None:
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module)


def test_a_masked_item_never_gets_probability_mass() -> None:
    module = make_module()
    with torch.no_grad():
        module.policy_head.module[0].module.item_bias[3] = 1e6  # by far the best, but masked
        td = masked_observation(module, 2000)
        dist = module.policy_head.get_dist(module.state_encoder(td.clone()))
        probs = dist.probs
        assert torch.all(probs[:, [7, 9]].sum(-1) == 1.0)
        assert torch.all(probs[:, 3] == 0.0)
        with set_exploration_type(ExplorationType.RANDOM):
            sampled = module.collection_policy(td.clone())["action"]
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            greedy = module.greedy_policy(td.clone())["action"]
    assert set(sampled.tolist()) == {7, 9}  # both allowed items, nothing else
    assert set(greedy.tolist()) <= {7, 9}


def test_gae_on_a_three_step_trajectory_equals_the_hand_computed_advantages() -> None:
    gamma, lam = 0.9, 0.8
    module = make_module(gamma=gamma, gae_lambda=lam)
    terminated = torch.tensor([False, False, True]).reshape(1, 3, 1)
    td = TensorDict(
        {
            "state_value": torch.tensor([0.5, 1.0, 1.5]).reshape(1, 3, 1),
            "next": {
                "state_value": torch.tensor([1.0, 1.5, 2.0]).reshape(1, 3, 1),
                "reward": torch.tensor([1.0, 2.0, 3.0]).reshape(1, 3, 1),
                "done": terminated.clone(),
                "terminated": terminated.clone(),
            },
        },
        batch_size=[1, 3],
    )
    module.advantage_module(td)
    # delta_t = r_t + gamma V(s_t+1) (0 after termination) - V(s_t)
    delta = [1 + gamma * 1.0 - 0.5, 2 + gamma * 1.5 - 1.0, 3 - 1.5]  # 1.4, 2.35, 1.5
    a2 = delta[2]
    a1 = delta[1] + gamma * lam * a2  # 3.43
    a0 = delta[0] + gamma * lam * a1  # 3.8696
    expected = torch.tensor([a0, a1, a2]).reshape(1, 3, 1)
    torch.testing.assert_close(td["advantage"], expected)
    torch.testing.assert_close(td["value_target"], expected + td["state_value"])


def test_values_from_the_collectors_states_equal_a_fresh_pass_across_episode_ends() -> None:
    """The one-pass value shortcut must give V(s') of the real next observation, also where
    an episode ended mid-rollout and the user was reset."""
    module = make_module(num_envs=16, frames_per_batch=16 * 24,
                         env_kwargs={"time_budget": 8.0})  # episodes of a few steps
    collector = module._make_collector()
    rollout = next(iter(collector))
    collector.shutdown()
    assert rollout["next", "done"][:, :-1].any()  # the test needs resets inside the rollout
    module.write_values(rollout, fresh_states=False)
    with torch.no_grad():
        value = module.value_network(rollout.exclude("state_value").clone())["state_value"]
        next_value = module.value_network(rollout["next"].exclude("state_value").clone())[
            "state_value"
        ]
    torch.testing.assert_close(rollout["state_value"], value, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rollout["next", "state_value"], next_value, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("advantages", ["batch", "epoch"])
def test_each_rollout_becomes_epochs_of_shuffled_minibatches(advantages: str) -> None:
    module = make_module(num_envs=4, frames_per_batch=32, ppo_epochs=3, minibatch_size=8,
                         advantages=advantages)
    collector = module._make_collector()
    rollout = next(iter(collector))
    collector.shutdown()
    batches = list(module.rollout_to_batches(rollout))
    assert len(batches) == 3 * 32 // 8
    assert all(b.batch_size == torch.Size([8]) for b in batches)
    assert {"advantage", "value_target", "action_log_prob"} <= set(batches[0].keys())
    assert "logits" not in batches[0].keys()  # the [N+1] scores are not stored
    # Every epoch is one pass over all frames: the same frames, in a new order.
    first_epoch = torch.cat([b["collector", "traj_ids"] * 1000 + b["history"][:, -1]
                             for b in batches[:4]])
    second_epoch = torch.cat([b["collector", "traj_ids"] * 1000 + b["history"][:, -1]
                              for b in batches[4:8]])
    assert sorted(first_epoch.tolist()) == sorted(second_epoch.tolist())


def test_collection_acts_with_the_current_weights() -> None:
    """A change to the policy shows in the very next rollout: no stale copy of the weights."""
    module = make_module(num_envs=8, frames_per_batch=64, ppo_epochs=1, minibatch_size=64)
    stream = iter(module.train_dataloader())  # one minibatch per rollout
    first = next(stream)  # collected with the initial weights
    with torch.no_grad():
        module.policy_head.module[0].module.item_bias[5] = 50.0  # now item 5 is all but certain
    second = next(stream)
    # Item 5 is picked wherever it is allowed (the env masks items still in the history window).
    allowed_first, allowed_second = first["action_mask"][:, 5], second["action_mask"][:, 5]
    assert (first["action"][allowed_first] == 5).float().mean() < 0.2
    assert (second["action"][allowed_second] == 5).float().mean() > 0.95


def test_updates_on_a_rollout_lower_its_ppo_loss() -> None:
    """Optimising the clipped objective on a rollout lowers that rollout's loss."""
    module = make_module(num_envs=16, frames_per_batch=256, ppo_epochs=8, minibatch_size=64,
                         lr=1e-3, entropy_coeff=0.0)
    collector = module._make_collector()
    rollout = next(iter(collector))
    collector.shutdown()
    optimizer = module.configure_optimizers()["optimizer"]
    # Advantages are computed once ("batch" mode), before any update: every minibatch holds them.
    batches = list(module.rollout_to_batches(rollout))
    all_frames = torch.cat(batches[:4])  # the first epoch: every frame once

    def loss_on(frames) -> float:
        with torch.no_grad():
            out = module.loss_module(module.state_encoder(frames.clone()))
        return (out["loss_objective"] + out["loss_critic"]).item()

    before = loss_on(all_frames)
    for batch in batches:
        out = module.loss_module(module.state_encoder(batch))
        optimizer.zero_grad()
        (out["loss_objective"] + out["loss_critic"]).backward()
        optimizer.step()
    assert loss_on(all_frames) < before - 0.05


def mean_entropy(module: PPOModule) -> float:
    """The policy's entropy on fresh users (a fixed set of them)."""
    with torch.no_grad():
        state = module.state_encoder(module.make_env(256, seed=5).reset())
        return module.policy_head.get_dist(state).entropy().mean().item()


def test_entropy_falls_on_a_tiny_problem() -> None:
    """Ten items whose qualities differ a lot: the policy concentrates on the good ones."""
    L.seed_everything(0, verbose=False)
    module = make_module(num_items=10, history_length=3, num_envs=32, frames_per_batch=512,
                         ppo_epochs=2, minibatch_size=256, lr=1e-2, gamma=0.99)
    before = mean_entropy(module)
    assert before == pytest.approx(torch.log(torch.tensor(10.0)).item(), abs=0.1)  # ~uniform
    fit(module, max_steps=100)
    assert mean_entropy(module) < before - 0.5  # measured: 2.27 -> 1.15 nats


@pytest.mark.slow
def test_ppo_learns_to_beat_random() -> None:
    """A small budget of training clearly separates the greedy policy from random."""
    L.seed_everything(0, verbose=False)
    module = make_module(num_envs=32, frames_per_batch=1024, ppo_epochs=2, minibatch_size=256,
                         lr=3e-3, gamma=0.99, gae_lambda=0.95)
    fit(module, max_steps=300)
    assert_beats_random(module)  # measured: 200 +- 7 against 137 +- 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"advantages": "sometimes"}, "algo.advantages"),
        ({"minibatch_size": 4096}, "algo.minibatch_size"),
        ({"ppo_epochs": 0}, "algo.ppo_epochs"),
        ({"max_grad_norm": 0.0}, "algo.max_grad_norm"),
    ],
)
def test_invalid_options_are_rejected_with_the_setting_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_module(**options)
