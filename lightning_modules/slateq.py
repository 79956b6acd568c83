"""SlateQ (Ie et al., IJCAI 2019): Q-learning over slates, decomposed over their items.

A slate's value is the choice-weighted mean of its items' long-term values:

    Q(s, A) = (v(s, 0) Q(s, 0) + sum_{i in A} v(s, i) Q(s, i)) / (v(s, 0) + sum_{i in A} v(s, i))

``Q(s, i)``: the return of a user in state ``s`` who chooses item ``i`` (``i = 0``: nothing);
``v(s, i) = exp(u(s, i))``: the user's choice weights, a multinomial logit with a no-click
option learnt from the clicks (RecSim's users choose proportionally to such weights). Only the
item the user chose has a TD target, so what is learnt per item is a single-item Q-function:

    collect slates with the epsilon-greedy slate policy              (Collector, SlateExploration)
    add the rollout to the replay buffer (n-step returns)            (MultiStep, TensorDictReplayBuffer)
    repeat updates_per_batch times:
        c = the chosen item of the slate (0: no click)
        A' = top-k of v(s', i) Q(s', i) over the allowed items        (online network)
        y = r + gamma^n (1 - terminated) Q_target(s', A')             (choice model: online)
        loss = Huber(Q(s, c), y) + choice_loss_weight * CE(u(s, [0] + A), c)
        optimiser step; Polyak-average the target network             (SlateQLoss, SoftUpdate)

Slates are chosen by the paper's top-k rule (the ``k`` best ``v Q``, best first) over the
allowed items: the whole catalogue, or RecSim's candidates (``env.num_candidates``). Both heads
share the BERT history encoder; item value and choice weight are scored against the encoder's
item table (`ItemScorer`), so what is learnt about an item on one head informs the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import Tensor, nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.data.postprocs import MultiStep
from torchrl.envs.utils import ExplorationType, exploration_type
from torchrl.objectives import LossModule, SoftUpdate
from torchrl.objectives.utils import distance_loss

from lightning_modules.replay import ReplayRLModule
from lightning_modules.policy import EnvFactory
from recrl.baselines import top_slate
from recrl.checks import check_slate_support
from recrl.encoders import HistoryEncoderBase, ItemScorer
from recrl.observation import HISTORY_KEYS, chosen_position, uniform_valid_slate

#: Where the network writes its two heads, and the policy its slate scores.
ITEM_VALUE, CHOICE_LOGIT, SLATE_SCORE = "item_value", "choice_logit", "action_value"


class SlateQNetwork(nn.Module):
    """One encoder pass, two heads over the catalogue: ``Q(s, i)`` and the choice logit
    ``u(s, i)``, each ``[..., N+1]``; index 0 (the padding item) stands for "no click".

    With ``dueling`` the item values are ``V(s) + score(s, i)``: ``V(s)`` carries how long the
    user will stay, which varies far more between states than between items, and is then also
    the value of a slate the user ignores (item 0's vector is padding).
    """

    def __init__(self, encoder: HistoryEncoderBase, dueling: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.value_head = ItemScorer(encoder)
        self.state_value = nn.Linear(encoder.hidden_size, 1) if dueling else None
        self.choice_head = ItemScorer(encoder)

    def forward(self, history: Tensor, response: Tensor, watch_time: Tensor
                ) -> tuple[Tensor, Tensor]:
        state = self.encoder(history, response, watch_time)  # [..., H]
        values = self.value_head(state)  # [..., N+1]
        if self.state_value is not None:
            values = values + self.state_value(state)
        return values, self.choice_head(state)


def choice_weights(choice_logit: Tensor) -> Tensor:
    """``v(s, i) / v(s, 0)``, ``[..., N+1]``: choice weights relative to "no click" (index 0 is
    then exactly 1), the exponent clamped so that a large logit cannot overflow."""
    return (choice_logit - choice_logit[..., :1]).clamp(max=30.0).exp()


def slate_scores(item_value: Tensor, choice_logit: Tensor, mask: Tensor) -> Tensor:
    """The top-k rule's item scores ``v(s, i) Q(s, i)``, -inf where ``mask`` ([..., N+1]) is
    False."""
    return (choice_weights(choice_logit) * item_value).masked_fill(~mask, float("-inf"))


def slate_value(item_value: Tensor, choice_logit: Tensor, slate: Tensor) -> Tensor:
    """``Q(s, A)`` of the slates ``A`` ([B, k]) under the choice model, ``[B]``."""
    weights = choice_weights(choice_logit)  # [B, N+1], weights[:, 0] = 1
    slate_weights = weights.gather(-1, slate)  # [B, k]
    numerator = item_value[..., 0] + (slate_weights * item_value.gather(-1, slate)).sum(-1)
    return numerator / (1.0 + slate_weights.sum(-1))


class SlatePolicy(TensorDictModuleBase):
    """The greedy slate policy: the network's heads, then the ``slate_size`` best allowed items
    by ``v Q`` (best first). Writes the heads, ``"action_value"`` (the scores) and ``"action"``."""

    def __init__(self, network: TensorDictModule, slate_size: int) -> None:
        super().__init__()
        self.network = network
        self.slate_size = slate_size
        self.in_keys = [*network.in_keys, "action_mask"]
        self.out_keys = [*network.out_keys, SLATE_SCORE, "action"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        tensordict = self.network(tensordict)
        scores = slate_scores(tensordict[ITEM_VALUE], tensordict[CHOICE_LOGIT],
                              tensordict["action_mask"])
        tensordict.set(SLATE_SCORE, scores)
        return tensordict.set("action", top_slate(scores, self.slate_size))


class SlateExploration(TensorDictModuleBase):
    """Epsilon-greedy over slates: with probability epsilon a user's slate is replaced by a
    uniformly random ordered slate of allowed items (TorchRL's ``EGreedyModule`` draws from the
    action spec, which knows nothing of distinct items). Epsilon anneals linearly with `step`
    (frames); only under ``ExplorationType.RANDOM`` (collection), never in evaluation."""

    in_keys = ["action", "action_mask"]
    out_keys = ["action"]

    def __init__(self, eps_init: float, eps_end: float, annealing_num_steps: int) -> None:
        super().__init__()
        self.eps_init, self.eps_end = float(eps_init), float(eps_end)
        self.annealing_num_steps = max(1, int(annealing_num_steps))
        # A buffer: checkpoints and exact resume carry epsilon.
        self.register_buffer("eps", torch.tensor(self.eps_init))

    def step(self, frames: int = 1) -> None:
        change = (self.eps_init - self.eps_end) * frames / self.annealing_num_steps
        self.eps.copy_(torch.clamp(self.eps - change, min=min(self.eps_init, self.eps_end),
                                   max=max(self.eps_init, self.eps_end)))

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        if exploration_type() not in (ExplorationType.RANDOM, None):
            return tensordict
        action, mask = tensordict["action"], tensordict["action_mask"]  # [B, k], [B, N+1]
        explore = torch.rand(action.shape[:-1], device=action.device) < self.eps  # [B]
        random_slate = uniform_valid_slate(mask, action.shape[-1])
        return tensordict.set("action", torch.where(explore[..., None], random_slate, action))


class SlateQLoss(LossModule):
    """SlateQ's loss (module docstring): Huber TD error of the chosen item's value against the
    target network's value of the next greedy slate (double-Q: the online network chooses it),
    plus the cross-entropy of the choice model on [no click] + the slate.

    Reads ``"action"`` ([B, k]), ``"chosen"`` ([B], the slate position chosen, -1: none),
    ``("next", "reward" | "terminated" | "action_mask")`` and, after an n-step transform,
    ``"steps_to_next_obs"`` (the bootstrap is discounted by gamma to that power).
    """

    @dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"
        chosen: NestedKey = "chosen"
        action_mask: NestedKey = "action_mask"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"
        steps_to_next_obs: NestedKey = "steps_to_next_obs"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    network: TensorDictModule
    network_params: TensorDictParams
    target_network_params: TensorDictParams

    def __init__(self, network: TensorDictModule, *, gamma: float, choice_loss_weight: float,
                 loss_function: str = "smooth_l1") -> None:
        super().__init__()
        self.convert_to_functional(network, "network", create_target_params=True)
        self.gamma = gamma
        self.choice_loss_weight = choice_loss_weight
        self.loss_function = loss_function

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        out = self.network(tensordict.select(*self.network.in_keys).copy())
        item_value, choice_logit = out[ITEM_VALUE], out[CHOICE_LOGIT]  # [B, N+1] each
        slate = tensordict[keys.action]  # [B, k]
        position = tensordict[keys.chosen]  # [B], -1: no click
        clicked = position >= 0
        chosen_item = torch.where(
            clicked, slate.gather(-1, position.clamp(min=0)[:, None]).squeeze(-1), 0)  # [B]
        chosen_value = item_value.gather(-1, chosen_item[:, None]).squeeze(-1)  # [B]

        next_td = tensordict["next"]
        with torch.no_grad():
            next_obs = next_td.select(*self.network.in_keys)
            online = self.network(next_obs.copy())
            scores = slate_scores(online[ITEM_VALUE], online[CHOICE_LOGIT],
                                  next_td[keys.action_mask])
            next_slate = scores.topk(slate.shape[-1], dim=-1).indices  # [B, k]
            with self.target_network_params.to_module(self.network):
                target = self.network(next_obs.copy())
            next_value = slate_value(target[ITEM_VALUE], online[CHOICE_LOGIT], next_slate)
            steps = tensordict.get(keys.steps_to_next_obs, None)
            discount = (self.gamma if steps is None
                        else self.gamma ** steps.reshape(next_value.shape).float())
            not_terminal = (~next_td[keys.terminated]).reshape(next_value.shape).float()
            value_target = (next_td[keys.reward].reshape(next_value.shape)
                            + discount * not_terminal * next_value)
        value_loss = distance_loss(chosen_value, value_target, self.loss_function).mean()
        # Choice model: a multinomial logit over [no click] + the slate's items.
        logits = torch.cat([choice_logit[:, :1], choice_logit.gather(-1, slate)], dim=-1)
        choice_loss = F.cross_entropy(logits, position + 1)
        return TensorDict({
            "loss_value": value_loss, "loss_choice": choice_loss,
            "loss": value_loss + self.choice_loss_weight * choice_loss,
            "td_error": (chosen_value - value_target).detach().abs(),
        }, batch_size=[])


class SlateQModule(ReplayRLModule):
    """SlateQ with a BERT history encoder, trained from a TorchRL collector + replay buffer.

    See ``conf/algo/slateq.yaml`` for what each argument does; the defaults here are the same.
    """

    slate_support = "slate"

    def __init__(
        self,
        encoder: HistoryEncoderBase,
        env_factory: EnvFactory,
        *,
        num_envs: int = 64,
        frames_per_batch: int = 2048,
        updates_per_batch: int = 8,
        batch_size: int = 128,
        buffer_size: int = 100_000,
        learning_starts: int = 2_000,
        gamma: float = 0.99,
        n_steps: int = 32,
        dueling: bool = True,
        reward_scale: float = 0.01,
        choice_loss_weight: float = 1.0,
        loss_function: str = "smooth_l1",
        lr: float = 3e-4,
        weight_decay: float = 0.0,
        anneal_lr: bool = True,
        max_grad_norm: float = 10.0,
        target_tau: float = 0.005,
        eps_init: float = 1.0,
        eps_end: float = 0.05,
        eps_annealing_frames: int = 100_000,
        seed: int = 0,
    ) -> None:
        super().__init__(
            encoder, env_factory, num_envs=num_envs, frames_per_batch=frames_per_batch,
            max_grad_norm=max_grad_norm, seed=seed,
        )
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        slate_size = self.make_env(1, seed=seed).slate_size
        check_slate_support(self.slate_support, slate_size, "slateq")
        if n_steps < 1 or frames_per_batch // num_envs < n_steps:
            raise ValueError(
                f"algo.n_steps={n_steps} must be >= 1 and at most the rollout length "
                f"frames_per_batch / num_envs = {frames_per_batch // num_envs}"
            )
        self.slate_size = slate_size
        self.q_network = SlateQNetwork(encoder, dueling=dueling)
        network = TensorDictModule(self.q_network, in_keys=HISTORY_KEYS,
                                   out_keys=[ITEM_VALUE, CHOICE_LOGIT])
        self.policy = SlatePolicy(network, slate_size)
        self.exploration = SlateExploration(eps_init, eps_end, eps_annealing_frames)
        self.multi_step = MultiStep(gamma=gamma, n_steps=n_steps) if n_steps > 1 else None
        self.loss_module = SlateQLoss(network, gamma=gamma, choice_loss_weight=choice_loss_weight,
                                      loss_function=loss_function)
        self.target_updater = SoftUpdate(self.loss_module, tau=target_tau)
        # On the training device, where the first rollout is (see DQNModule).
        self.replay_buffer = TensorDictReplayBuffer(
            storage=LazyTensorStorage(buffer_size, device="auto"), batch_size=batch_size)

    @property
    def greedy_policy(self) -> TensorDictModuleBase:
        return self.policy

    @property
    def collection_policy(self) -> TensorDictSequential:
        return TensorDictSequential(self.policy, self.exploration)

    def rollout_to_batches(self, rollout: TensorDictBase) -> Iterator[TensorDictBase]:
        # The collecting policy's per-item outputs ([N+1] floats each) are not needed to learn.
        rollout = rollout.exclude(ITEM_VALUE, CHOICE_LOGIT, SLATE_SCORE)
        # Which item of its slate the user chose, read before n-step shifts "next".
        rollout["chosen"] = chosen_position(rollout["next", "history_response"], self.slate_size)
        if self.multi_step is not None:
            rollout = self.multi_step(rollout)
        transitions = rollout.reshape(-1)
        transitions["next", "reward"] = transitions["next", "reward"] * self.hparams.reward_scale
        yield from self.store_and_replay(transitions, rollout.numel())

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> Tensor:
        losses = self.loss_module(batch)
        self.log_loss("train/td_loss", losses["loss_value"], prog_bar=True)
        self.log_loss("train/choice_loss", losses["loss_choice"])
        self.log_loss("train/loss", losses["loss"])
        if self.should_log:
            self.log("train/epsilon", self.exploration.eps)
        self.log_progress()
        return losses["loss"]

    def configure_optimizers(self) -> dict:
        return self.adamw(self.hparams.lr, self.hparams.weight_decay, self.hparams.anneal_lr)
