"""DQN: masking everywhere an action is chosen, and learning that beats random."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torchrl.envs.utils import ExplorationType, set_exploration_type

from lightning_modules.dqn import DQNModule
from tests.conftest import assert_beats_random, masked_observation, small_module


def make_module(num_items: int = 60, history_length: int = 5, **kwargs) -> DQNModule:
    return small_module(DQNModule, num_items, history_length, **kwargs)


def test_greedy_policy_never_picks_a_masked_item() -> None:
    module = make_module()
    with torch.no_grad():
        # Make a masked item by far the best: the mask must still win.
        module.q_network.scorer.item_bias[3] = 1e6
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            td = module.greedy_policy(masked_observation(module, 64))
    assert set(td["action"].tolist()) <= {7, 9}


def test_exploration_never_picks_a_masked_item() -> None:
    module = make_module(eps_init=1.0, eps_end=1.0)  # always explore
    with torch.no_grad(), set_exploration_type(ExplorationType.RANDOM):
        td = module.collection_policy(masked_observation(module, 2000))
    assert set(td["action"].tolist()) == {7, 9}  # both allowed items, nothing else


def test_epsilon_anneals_linearly_over_frames() -> None:
    module = make_module(eps_init=1.0, eps_end=0.1, eps_annealing_frames=100)
    module.exploration.step(50)
    assert module.exploration.eps.item() == pytest.approx(0.55, abs=1e-5)
    module.exploration.step(500)
    assert module.exploration.eps.item() == pytest.approx(0.1, abs=1e-6)


def test_double_dqn_target_network_and_loss() -> None:
    module = make_module()
    assert module.loss_module.double_dqn and module.loss_module.delay_value
    online = dict(module.loss_module.value_network_params.flatten_keys().items())
    target = dict(module.loss_module.target_value_network_params.flatten_keys().items())
    key = next(k for k in online if k.endswith("item_bias"))
    assert online[key].data_ptr() != target[key].data_ptr()  # a separate copy, not a view


def test_greedy_network_target_acts_with_the_target_weights() -> None:
    """greedy_network=target: the evaluated Q-values are the target network's (the weights are
    swapped in for the call and back), exploration still acts with the online network."""
    module = make_module(greedy_network="target", eps_init=0.0, eps_end=0.0)
    with torch.no_grad():
        module.q_network.scorer.item_bias.add_(torch.arange(61.0))  # online and target now differ
    observation = masked_observation(module, 4)
    reference = make_module()  # same initial weights: the target network's, as a plain policy
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        evaluated = module.greedy_policy(observation.clone())["action_value"]
        target = reference.policy(observation.clone())["action_value"]
        online = module.policy(observation.clone())["action_value"]  # swapped back after the call
        collected = module.collection_policy(observation.clone())["action_value"]
    torch.testing.assert_close(evaluated, target)
    assert not torch.allclose(evaluated, online)
    torch.testing.assert_close(collected, online)
    # What evaluation.select=best keeps: the trained parameters and their target copies.
    weights = module.policy_weights()
    assert {"target_network.module.0.module.scorer.item_bias", "q_network.scorer.item_bias"} <= weights.keys()
    assert len(weights) == 2 * len(list(module.named_parameters()))
    with pytest.raises(ValueError, match="algo.greedy_network"):
        make_module(greedy_network="average")



def test_target_network_policy_follows_the_module_to_another_device_or_dtype() -> None:
    """A GPU run evaluates with the target network on the GPU, then Lightning moves the module
    back to the CPU for the final evaluation. Every target weight must move with it (a dtype
    change takes the same path as a device change, so this runs without a GPU)."""
    module = make_module(greedy_network="target")
    module.double()  # "to the GPU"
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        module.greedy_policy(masked_observation(module, 4))  # act with the target weights there
        module.float()  # "back to the CPU"
        target = module.loss_module.target_value_network_params
        assert {v.dtype for v in target.values(True, True) if v.is_floating_point()} == {torch.float32}
        evaluated = module.greedy_policy(masked_observation(module, 4))["action_value"]
    assert evaluated.dtype == torch.float32
@pytest.mark.slow
def test_dqn_learns_to_beat_random() -> None:
    """A small budget of training clearly separates the greedy policy from random."""
    L.seed_everything(0, verbose=False)
    module = make_module(
        num_envs=32, frames_per_batch=64, updates_per_batch=2, batch_size=64,
        learning_starts=500, eps_annealing_frames=8_000, eps_end=0.05, lr=2e-3, gamma=0.5,
        n_steps=1, reward_scale=1.0, click_loss_weight=1.0,
    )
    trainer = L.Trainer(max_steps=300, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.fit(module)
    assert_beats_random(module)


@pytest.mark.parametrize(
    "options",
    [{"prioritized": True}, {"target_update": "hard", "target_hard_period": 2}, {"n_steps": 4}],
)
def test_training_options_run_a_real_update(options: dict) -> None:
    """Prioritised replay (TorchRL's C++ segment tree), hard target updates and n-step targets."""
    module = make_module(num_envs=4, frames_per_batch=16, batch_size=8, learning_starts=0,
                         click_loss_weight=1.0, **{"n_steps": 1, **options})
    collector = module._make_collector()
    rollout = next(iter(collector))
    batches = list(module.rollout_to_batches(rollout))
    assert len(batches) == module.hparams.updates_per_batch
    if options.get("n_steps", 1) > 1:
        assert batches[0]["steps_to_next_obs"].max() > 1  # MultiStep looked ahead
    optimizer = module.configure_optimizers()["optimizer"]
    before = module.q_network.scorer.query.weight.detach().clone()
    loss = module.loss_module(batches[0])["loss"] + module.click_loss(batches[0])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert not torch.equal(before, module.q_network.scorer.query.weight)
    if options.get("prioritized"):
        module.replay_buffer.update_tensordict_priority(batches[0])
        assert "priority_weight" in module.replay_buffer.sample().keys()
    collector.shutdown()


def test_n_steps_longer_than_a_rollout_is_rejected() -> None:
    with pytest.raises(ValueError, match="n_steps"):
        make_module(num_envs=8, frames_per_batch=16, n_steps=4)


def test_click_counts_and_click_targets_answer_the_action_even_with_n_steps() -> None:
    """n-step targets shift "next" forward; popularity and the click loss must not follow."""
    module = make_module(num_envs=4, frames_per_batch=32, batch_size=8, learning_starts=0,
                         n_steps=4, buffer_size=64)
    collector = module._make_collector()
    raw = next(iter(collector))
    expected_clicks = torch.zeros(61).index_add_(
        0, raw["action"][raw["next", "click"]], torch.ones(int(raw["next", "click"].sum()))
    )
    list(module._count_and_batch(raw.clone()))
    torch.testing.assert_close(module.item_clicks, expected_clicks)
    stored = module.replay_buffer.storage[:32]
    assert torch.equal(stored["clicked"], raw["next", "click"].reshape(-1))
    collector.shutdown()


def test_anneal_lr_decays_the_learning_rate_linearly_to_zero_over_max_steps() -> None:
    module = make_module(num_envs=4, frames_per_batch=16, batch_size=8, learning_starts=0,
                         n_steps=1, lr=1e-3, anneal_lr=True)
    seen: list[float] = []

    class RecordLearningRate(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(max_steps=8, accelerator="cpu", logger=False, callbacks=[RecordLearningRate()],
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module)
    assert seen == pytest.approx([1e-3 * (1 - step / 8) for step in range(8)])


def test_resume_refuses_other_settings_but_not_a_setting_added_since_at_its_default(
    tmp_path,
) -> None:
    """check_compatible (ckpt_path=...): the same settings pass; a changed one, another model
    shape, or a setting added to recrl since the checkpoint was written but not at its default
    is refused naming the setting; an added one at its default is what the checkpoint ran with."""
    from recrl.checkpoint_io import CheckpointError, check_compatible

    path = tmp_path / "last.ckpt"
    module = make_module()
    checkpoint = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}
    check_compatible(checkpoint, module, path)
    older = {**checkpoint, "hyper_parameters": {key: value for key, value in module.hparams.items()
                                                if key != "greedy_network"}}
    check_compatible(older, module, path)
    with pytest.raises(CheckpointError, match="algo.greedy_network='target' is not in the checkpoint"):
        check_compatible(older, make_module(greedy_network="target"), path)
    with pytest.raises(CheckpointError, match="algo.gamma=0.99 in the checkpoint, 0.5 now"):
        check_compatible(checkpoint, make_module(gamma=0.5), path)
    with pytest.raises(CheckpointError, match="holds another model"):
        check_compatible(checkpoint, make_module(num_items=40), path)
