"""REINFORCE with a learnt baseline (Williams 1992), the worked example of docs/extending.md.

    collect a rollout [num_envs, steps] with the current policy       (Collector)
    G_t = r_t + gamma * G_t+1, bootstrapped with V where the rollout cuts a session   (TD1)
    A_t = G_t - V(s_t), normalised over the rollout
    loss = -log pi(a_t | s_t) * A_t  +  critic_coeff * (G_t - V(s_t))^2    (ReinforceLoss)
    one optimiser step on the whole rollout, then discard it

The policy is a categorical over the items the environment's ``action_mask`` allows, with logits
``<W s, e_a> + b_a`` from the shared encoder; the baseline is a linear value head on the same state.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import MaskedCategorical, ProbabilisticActor
from torchrl.objectives import ReinforceLoss
from torchrl.objectives.value import TD1Estimator

from lightning_modules.online import OnlineRLModule
from lightning_modules.policy import EnvFactory
from recrl.encoders import HistoryEncoderBase, HistoryScorer
from recrl.observation import HISTORY_KEYS


class ReinforceModule(OnlineRLModule):
    """REINFORCE with a value baseline; see ``conf/algo/reinforce.yaml`` for each argument."""

    score_key = "logits"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *, num_envs: int = 16,
                 frames_per_batch: int = 512, gamma: float = 0.99, critic_coeff: float = 0.5,
                 reward_scale: float = 0.1, lr: float = 3e-4, max_grad_norm: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__(encoder, env_factory, num_envs=num_envs,
                         frames_per_batch=frames_per_batch, max_grad_norm=max_grad_norm, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        self.policy = ProbabilisticActor(
            TensorDictModule(HistoryScorer(encoder), in_keys=HISTORY_KEYS, out_keys=["logits"]),
            in_keys={"logits": "logits", "mask": "action_mask"},
            distribution_class=MaskedCategorical,
            spec=self.make_env(1, seed=seed).action_spec_unbatched,
            return_log_prob=True,
        )
        self.critic = TensorDictSequential(
            TensorDictModule(encoder, in_keys=HISTORY_KEYS, out_keys=["state"]),
            TensorDictModule(nn.Linear(encoder.hidden_size, 1), in_keys=["state"],
                             out_keys=["state_value"]),
        )
        self.loss_module = ReinforceLoss(self.policy, self.critic, loss_critic_type="l2")
        # Reads the values rollout_to_batches writes (TorchRL would vmap the encoder over them).
        self.returns = TD1Estimator(gamma=gamma, value_network=None)

    @property
    def greedy_policy(self) -> ProbabilisticActor:
        return self.policy  # the most likely item under ExplorationType.DETERMINISTIC

    @property
    def collection_policy(self) -> ProbabilisticActor:
        return self.policy  # samples from the categorical

    def rollout_to_batches(self, rollout: TensorDictBase) -> Iterator[TensorDictBase]:
        rollout = rollout.exclude("logits")  # recomputed with gradients in the loss
        rollout["next", "reward"] = rollout["next", "reward"] * self.hparams.reward_scale
        with torch.no_grad():  # V(s_t), V(s_t+1), then G_t and G_t - V(s_t) along time
            self.critic(rollout)
            self.critic(rollout["next"])
            self.returns(rollout)
        advantage = rollout["advantage"]  # normalised: the step size no longer follows the returns
        rollout["advantage"] = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        yield rollout.exclude("state", ("next", "state")).reshape(-1)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        out = self.loss_module(batch)
        loss = out["loss_actor"] + self.hparams.critic_coeff * out["loss_value"]
        self.log_loss("train/loss_actor", out["loss_actor"])
        self.log_loss("train/loss_value", out["loss_value"])
        self.log_loss("train/loss", loss, prog_bar=True)
        self.log_progress()
        return loss

    def configure_optimizers(self) -> dict:
        return self.adamw(self.hparams.lr, weight_decay=0.0, anneal_lr=False)
