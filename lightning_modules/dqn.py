"""Deep Q-learning over the whole catalogue (double DQN with a target network).

The algorithm, as ``training_step`` and ``rollout_to_batches`` read it:

    collect a rollout with the epsilon-greedy policy     (Collector, EGreedyModule)
    add it to the replay buffer; anneal epsilon           (TensorDictReplayBuffer)
    repeat updates_per_batch times:
        sample a batch; loss = Huber(Q(s, a), r + gamma * Q_target(s', argmax_a' Q(s', a')))
        optimiser step; move the target network towards the online one   (DQNLoss, SoftUpdate)

Q-values come from ``HistoryScorer``: BERT state -> one score per catalogue item in one matrix
product. Items hidden by the environment's ``action_mask`` are never chosen, neither greedily,
nor by exploration, nor as the double-DQN bootstrap action.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.postprocs import MultiStep
from torchrl.data.replay_buffers import PrioritizedSampler, RandomSampler
from torchrl.modules import EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss, HardUpdate, SoftUpdate, ValueEstimators

from lightning_modules.replay import ReplayRLModule
from lightning_modules.policy import EnvFactory
from recrl.encoders import HistoryEncoderBase, HistoryScorer, ItemScorer
from recrl.observation import HISTORY_KEYS


class ActWithWeights(TensorDictModuleBase):
    """Runs ``policy`` with other weights of its own shape, e.g. the target network's.

    The weights stand in for the policy's own for one call (``torch.func.functional_call``), so
    one set of modules serves both networks and nothing is copied. Not
    ``TensorDictParams.to_module``: after its swap, a later ``module.to(device)`` left some of
    the loss module's target tensors behind on the old device (the final evaluation of a GPU
    run then met target weights on the GPU and a model on the CPU).
    """

    def __init__(self, policy: TensorDictModuleBase, weights: TensorDictParams) -> None:
        super().__init__()
        self.policy = policy
        self.in_keys, self.out_keys = policy.in_keys, policy.out_keys
        # By parameter name, once: the tensors are the loss module's own (a plain dict, not
        # registered here), updated in place by the target updater.
        self._weights = dict(weights.flatten_keys(".").items())

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return torch.func.functional_call(self.policy, self._weights, (tensordict,), strict=True)


class DQNModule(ReplayRLModule):
    """Double DQN with a BERT history encoder, trained from a TorchRL collector + replay buffer.

    See ``conf/algo/dqn.yaml`` for what each argument does; the defaults here are the same.
    """

    def __init__(
        self,
        encoder: HistoryEncoderBase,
        env_factory: EnvFactory,
        *,
        num_envs: int = 8,
        frames_per_batch: int = 256,
        updates_per_batch: int = 4,
        batch_size: int = 64,
        buffer_size: int = 100_000,
        learning_starts: int = 2_000,
        prioritized: bool = False,
        priority_alpha: float = 0.6,
        priority_beta: float = 0.4,
        gamma: float = 0.99,
        n_steps: int = 32,
        dueling: bool = True,
        reward_scale: float = 0.01,
        click_loss_weight: float = 0.0,
        loss_function: str = "smooth_l1",
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        anneal_lr: bool = False,
        max_grad_norm: float = 10.0,
        target_update: str = "soft",
        target_tau: float = 0.005,
        target_hard_period: int = 1_000,
        greedy_network: str = "online",
        eps_init: float = 1.0,
        eps_end: float = 0.2,
        eps_annealing_frames: int = 20_000,
        repeat_bias: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            encoder, env_factory, num_envs=num_envs, frames_per_batch=frames_per_batch,
            max_grad_norm=max_grad_norm, seed=seed,
        )
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        if target_update not in ("soft", "hard"):
            raise ValueError(f"algo.target_update must be 'soft' or 'hard', got {target_update!r}")
        if greedy_network not in ("online", "target"):
            raise ValueError(
                f"algo.greedy_network must be 'online' or 'target', got {greedy_network!r}"
            )
        if n_steps < 1 or frames_per_batch // num_envs < n_steps:
            raise ValueError(
                f"algo.n_steps={n_steps} must be >= 1 and at most the rollout length "
                f"frames_per_batch / num_envs = {frames_per_batch // num_envs}"
            )
        action_spec = self.make_env(1, seed=seed).action_spec_unbatched
        self.q_network = HistoryScorer(encoder, state_value=dueling, repeat_bias=repeat_bias)
        if self.q_network.scorer.from_pretrained:
            # A pretrained head (encoder.init_from) scores in its own units: a rating of the next
            # item, a next-item logit. Q-values are returns in units of reward_scale, and what
            # tells items apart in them is first the immediate reward (the dueling state value
            # learns the rest), so the head starts as reward_scale times its scores.
            self.q_network.scorer.scale_(reward_scale)
        # n-step returns: credit for a session that lasts longer reaches the recommendation
        # that caused it n times faster than with one-step TD targets.
        self.multi_step = MultiStep(gamma=gamma, n_steps=n_steps) if n_steps > 1 else None
        # Auxiliary click model on the shared encoder (SQN, Xin et al. 2020): predicting whether
        # the user clicks the recommended item is a dense, low-variance signal that teaches the
        # encoder user tastes and item similarity far sooner than bootstrapped TD targets do.
        self.click_head = ItemScorer(encoder) if click_loss_weight > 0 else None
        self.policy = QValueActor(
            TensorDictModule(self.q_network, in_keys=HISTORY_KEYS, out_keys=["action_value"]),
            spec=action_spec,
            action_space="categorical",
            action_mask_key="action_mask",
        )
        self.exploration = EGreedyModule(
            action_spec,
            eps_init=float(eps_init),
            eps_end=float(eps_end),
            annealing_num_steps=eps_annealing_frames,
            action_mask_key="action_mask",
        )
        self.loss_module = DQNLoss(
            self.policy,
            action_space="categorical",
            delay_value=True,
            double_dqn=True,
            loss_function=loss_function,
        )
        self.loss_module.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
        if target_update == "soft":
            self.target_updater = SoftUpdate(self.loss_module, tau=target_tau)
        else:
            self.target_updater = HardUpdate(
                self.loss_module, value_network_update_interval=target_hard_period
            )
        sampler = (
            PrioritizedSampler(buffer_size, alpha=priority_alpha, beta=priority_beta)
            if prioritized
            else RandomSampler()
        )
        # The storage lives where the first rollout does (device="auto"): on the training
        # device, so that neither extending nor sampling copies between host and GPU.
        self.replay_buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(buffer_size, device="auto"),
            sampler=sampler,
            batch_size=batch_size,
            priority_key="td_error",
        )
        self._priority_batch: TensorDictBase | None = None  # its TD errors update priorities

    @property
    def greedy_policy(self) -> TensorDictModuleBase:
        # greedy_network=target: the evaluated policy acts with the soft-updated target network,
        # a Polyak average of the online weights over about 1 / target_tau updates, which swings
        # less from update to update than the online network does. Exploration (collection)
        # always acts with the online network.
        if self.hparams.greedy_network == "target":
            return ActWithWeights(self.policy, self.loss_module.target_value_network_params)
        return self.policy

    def policy_weights(self) -> dict[str, torch.Tensor]:
        weights = super().policy_weights()
        if self.hparams.greedy_network == "target":
            # The target network is buffers of the loss module, not parameters: keep those that
            # mirror a trained parameter (not constant buffers such as item-text features).
            online = self.loss_module.value_network_params.flatten_keys(".")
            target = self.loss_module.target_value_network_params.flatten_keys(".")
            weights.update((f"target_network.{key}", target[key]) for key in online.keys()
                           if isinstance(online[key], torch.nn.Parameter))
        return weights

    @property
    def collection_policy(self) -> TensorDictSequential:
        return TensorDictSequential(self.policy, self.exploration)

    def rollout_to_batches(self, rollout: TensorDictBase) -> Iterator[TensorDictBase]:
        # The collecting policy's scores ([N+1] floats a frame) are not needed to learn: drop them.
        rollout = rollout.exclude("action_value", "chosen_action_value")
        # The user's answer to this very recommendation, kept before n-step shifts "next".
        rollout["clicked"] = rollout["next", "click"]
        if self.multi_step is not None:
            rollout = self.multi_step(rollout)
        transitions = rollout.reshape(-1)
        # Learn Q in scaled units: with returns in the hundreds, unscaled targets would take
        # Adam thousands of steps just to reach the right magnitude. Greedy actions are unchanged.
        transitions["next", "reward"] = transitions["next", "reward"] * self.hparams.reward_scale
        yield from self.store_and_replay(transitions, rollout.numel())

    def click_loss(self, batch: TensorDictBase) -> torch.Tensor:
        """Binary cross-entropy of the click model on the recommended items."""
        state = self.encoder(*(batch[key] for key in HISTORY_KEYS))  # [B, H]
        logits = self.click_head.score_items(state, batch["action"])  # [B]
        return F.binary_cross_entropy_with_logits(logits, batch["clicked"].float())

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        td_loss = self.loss_module(batch)["loss"]  # writes each transition's "td_error"
        if self.hparams.prioritized:
            # Applied with the step (optimizer_step): a step stopped for a NaN leaves the
            # priorities of the last good state.
            self._priority_batch = batch
        self.log_loss("train/td_loss", td_loss, prog_bar=True)
        loss = td_loss
        if self.click_head is not None:
            click_loss = self.click_loss(batch)
            loss = loss + self.hparams.click_loss_weight * click_loss
            self.log_loss("train/click_loss", click_loss)
        self.log_loss("train/loss", loss)
        if self.should_log:
            self.log("train/epsilon", self.exploration.eps)
        self.log_progress()
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)  # and the target network's update
        if self._priority_batch is not None:
            self.replay_buffer.update_tensordict_priority(self._priority_batch)
            self._priority_batch = None

    def configure_optimizers(self) -> dict:
        return self.adamw(self.hparams.lr, self.hparams.weight_decay, self.hparams.anneal_lr)
