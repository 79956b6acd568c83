"""Proximal policy optimisation: a categorical policy over the whole catalogue and a value head.

The algorithm, as ``rollout_to_batches`` and ``training_step`` read it:

    collect a rollout [num_envs, steps] with the current policy       (Collector)
    advantages A and value targets with GAE(gamma, lambda)           (GAE, current value head)
    repeat ppo_epochs times (advantages recomputed per epoch if asked):
        for each shuffled minibatch:
            loss = clipped surrogate(A) + c_v * value loss - c_e * entropy   (ClipPPOLoss)
            optimiser step (gradient norm clipped, learning rate optionally annealed)
    discard the rollout

Policy and value share one BERT encoder: ``pi(a|s) = softmax(<W s, e_a> + b_a)`` over the
items the environment's ``action_mask`` allows (``MaskedCategorical``: a masked item has
probability exactly 0), and ``V(s) = v . s``. On an env with slates (``env.slate_size = k > 1``)
the same logits define a Plackett-Luce policy over ordered slates of k distinct allowed items
(`recrl.distributions.PlackettLuce`: list-wise PPO); its log-probability is the sum over the
slate's positions, so the clipped ratio is the slate's. On a minibatch the encoder runs once; the loss's
actor and critic are the two heads reading the state it wrote (TorchRL's own
``ActorValueOperator`` would run the encoder once per head).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.modules import MaskedCategorical, ProbabilisticActor, ValueOperator
from torchrl.objectives import ClipPPOLoss
from torchrl.objectives.value import GAE

from lightning_modules.online import OnlineRLModule
from lightning_modules.policy import EnvFactory
from recrl.distributions import PlackettLuce
from recrl.torchrl_state import td_from_state, td_to_state
from recrl.encoders import HistoryEncoderBase, ItemScorer, RepeatBias, ScoreWithHistory
from recrl.observation import HISTORY_KEYS

#: When advantages are computed from the current value head.
ADVANTAGE_SCHEDULES = ("batch", "epoch")


class PPOModule(OnlineRLModule):
    """PPO with a shared BERT history encoder, on-policy through the TorchRL collector.

    See ``conf/algo/ppo.yaml`` for what each argument does; the defaults here are the same.
    """

    score_key = "logits"
    slate_support = "both"

    def __init__(
        self,
        encoder: HistoryEncoderBase,
        env_factory: EnvFactory,
        *,
        num_envs: int = 32,
        frames_per_batch: int = 2048,
        ppo_epochs: int = 4,
        minibatch_size: int = 256,
        gamma: float = 0.995,
        gae_lambda: float = 0.95,
        advantages: str = "batch",
        normalize_advantage: bool = True,
        clip_epsilon: float = 0.2,
        entropy_coeff: float = 0.01,
        critic_coeff: float = 0.5,
        loss_critic_type: str = "smooth_l1",
        reward_scale: float = 0.1,
        lr: float = 3e-4,
        anneal_lr: bool = True,
        weight_decay: float = 0.0,
        max_grad_norm: float = 0.5,
        repeat_bias: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__(
            encoder, env_factory, num_envs=num_envs, frames_per_batch=frames_per_batch,
            max_grad_norm=max_grad_norm, seed=seed,
        )
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        if advantages not in ADVANTAGE_SCHEDULES:
            raise ValueError(
                f"algo.advantages must be one of {ADVANTAGE_SCHEDULES}, got {advantages!r}"
            )
        if ppo_epochs < 1:
            raise ValueError(f"algo.ppo_epochs must be >= 1, got {ppo_epochs}")
        if not 1 <= minibatch_size <= frames_per_batch:
            raise ValueError(
                f"algo.minibatch_size={minibatch_size} must be between 1 and "
                f"algo.frames_per_batch={frames_per_batch}"
            )
        probe_env = self.make_env(1, seed=seed)
        action_spec = probe_env.action_spec_unbatched
        slate_size = getattr(probe_env, "slate_size", 1)
        self.state_encoder = TensorDictModule(encoder, in_keys=HISTORY_KEYS, out_keys=["state"])
        self.policy_head = ProbabilisticActor(
            (TensorDictModule(ScoreWithHistory(ItemScorer(encoder),
                                               RepeatBias(encoder.history_length)),
                              in_keys=["state", "history"], out_keys=["logits"])
             if repeat_bias else
             TensorDictModule(ItemScorer(encoder), in_keys=["state"], out_keys=["logits"])),
            in_keys={"logits": "logits", "mask": "action_mask"},
            distribution_class=MaskedCategorical if slate_size == 1 else PlackettLuce,
            distribution_kwargs={} if slate_size == 1 else {"slate_size": slate_size},
            spec=action_spec,
            return_log_prob=True,
        )
        self.value_head = ValueOperator(nn.Linear(encoder.hidden_size, 1), in_keys=["state"])
        #: history -> sampled item (collection) or most likely item (evaluation).
        self.policy = TensorDictSequential(self.state_encoder, self.policy_head)
        #: history -> V(s), for the advantages.
        self.value_network = TensorDictSequential(self.state_encoder, self.value_head)
        # TorchRL's GAE on values this module writes itself: V(s_t) from the states the collector
        # already encoded, V(s_t+1) from the same tensor shifted by one step (see
        # ``write_values``): one encoder pass per rollout instead of two.
        self.advantage_module = GAE(gamma=gamma, lmbda=gae_lambda, value_network=None)
        self.loss_module = ClipPPOLoss(
            self.policy_head,
            self.value_head,
            clip_epsilon=clip_epsilon,
            entropy_coeff=entropy_coeff,
            critic_coeff=critic_coeff,
            loss_critic_type=loss_critic_type,
            normalize_advantage=normalize_advantage,
        )
        #: Where the minibatches of the current rollout stand (``_minibatches``): the rollout,
        #: its frames with advantages, the epoch, this epoch's order and the next start.
        self._cursor: dict | None = None

    @property
    def greedy_policy(self) -> TensorDictSequential:
        return self.policy

    @property
    def collection_policy(self) -> TensorDictSequential:
        return self.policy

    @torch.no_grad()
    def write_values(self, rollout: TensorDictBase, fresh_states: bool) -> None:
        """Writes ``state_value`` = V(s_t) and ``("next", "state_value")`` = V(s_t+1) in place.

        ``rollout`` is ``[num_envs, steps]``. The next observation of a step is the following
        step's observation, except after the last step and where an episode ended (the user was
        reset): only those next observations are encoded here. With ``fresh_states=False`` the
        states the collector computed are reused; they come from the current weights as long as
        no update happened since the rollout was collected.
        """
        if fresh_states:
            state = self.encoder(*(rollout[key] for key in HISTORY_KEYS))
        else:
            state = rollout["state"]
        value = self.value_head.module(state)  # [E, T, 1]
        next_value = value.roll(-1, dims=1)
        boundary = rollout["next", "done"].squeeze(-1).clone()
        boundary[:, -1] = True
        next_obs = rollout["next"][boundary]
        next_value[boundary] = self.value_head.module(
            self.encoder(*(next_obs[key] for key in HISTORY_KEYS))
        )
        rollout["state_value"] = value
        rollout["next", "state_value"] = next_value

    @torch.no_grad()
    def compute_advantages(self, rollout: TensorDictBase, fresh_states: bool) -> TensorDictBase:
        """``advantage`` and ``value_target`` by GAE along the time dimension (in place)."""
        self.write_values(rollout, fresh_states)
        return self.advantage_module(rollout)

    def rollout_to_batches(self, rollout: TensorDictBase) -> Iterator[TensorDictBase]:
        # The collector's logits ([N+1] floats a frame) are recomputed with gradients in the loss.
        rollout = rollout.exclude("logits")
        # Learn values in scaled units (returns are in the hundreds); advantages are normalised.
        rollout["next", "reward"] = rollout["next", "reward"] * self.hparams.reward_scale
        self._cursor = {"rollout": rollout, "frames": None, "epoch": 0, "order": None, "start": 0}
        yield from self._minibatches()

    def _minibatches(self) -> Iterator[TensorDictBase]:
        """``ppo_epochs`` shuffled passes over the rollout's frames, from where ``_cursor`` stands."""
        cursor = self._cursor
        num_frames = cursor["rollout"].numel()
        minibatch_size = self.hparams.minibatch_size
        while cursor["epoch"] < self.hparams.ppo_epochs:
            if cursor["order"] is None:  # a new epoch
                epoch = cursor["epoch"]
                if epoch == 0 or self.hparams.advantages == "epoch":
                    # GAE runs along time on [num_envs, steps]; frames are shuffled afterwards.
                    self.compute_advantages(cursor["rollout"], fresh_states=epoch > 0)
                    cursor["frames"] = cursor["rollout"].exclude("state", ("next", "state")).reshape(-1)
                cursor["order"] = torch.randperm(num_frames)
                cursor["start"] = 0
            while cursor["start"] + minibatch_size <= num_frames:
                start = cursor["start"]
                cursor["start"] = start + minibatch_size
                yield cursor["frames"][cursor["order"][start : start + minibatch_size]]
            cursor["epoch"] += 1
            cursor["order"] = None

    # -- exact resume: where the current rollout's minibatches stand ------------------------
    def batching_state(self) -> dict | None:
        cursor = self._cursor
        if cursor is None:
            return None
        # The rollout itself is needed only to recompute advantages at a later epoch.
        later_gae = self.hparams.advantages == "epoch" and cursor["epoch"] + 1 < self.hparams.ppo_epochs
        return {
            "rollout": td_to_state(cursor["rollout"].exclude("state", ("next", "state")))
            if later_gae else None,
            "frames": None if cursor["frames"] is None else td_to_state(cursor["frames"]),
            "epoch": cursor["epoch"],
            "order": cursor["order"],
            "start": cursor["start"],
        }

    def resume_batching(self, state: dict) -> Iterator[TensorDictBase]:
        def restore(saved: dict | None) -> TensorDictBase | None:
            return None if saved is None else td_from_state(saved, device=self.device)

        rollout, frames = restore(state["rollout"]), restore(state["frames"])
        if rollout is None:  # no advantages to recompute: only the frames' count is read
            rollout = frames
        self._cursor = {"rollout": rollout, "frames": frames, "epoch": int(state["epoch"]),
                        "order": state["order"], "start": int(state["start"])}
        return self._minibatches()

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> torch.Tensor:
        batch = self.state_encoder(batch)  # once, with gradients; both heads read it
        out = self.loss_module(batch)
        loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
        for key in ("loss_objective", "loss_critic", "loss_entropy"):
            if key in out.keys():
                self.log_loss(f"train/{key}", out[key].detach().float().mean())
        should_log = self.should_log
        if should_log:
            for key in ("entropy", "kl_approx", "clip_fraction", "explained_variance"):
                if key in out.keys():
                    self.log(f"train/{key}", out[key].detach().float().mean())
        self.log_loss("train/loss", loss, prog_bar=True)
        if should_log:
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        self.log_progress()
        return loss

    def configure_optimizers(self) -> dict:
        return self.adamw(self.hparams.lr, self.hparams.weight_decay, self.hparams.anneal_lr)
