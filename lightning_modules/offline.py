"""Offline (batch) RL: policies learnt from a log's transitions, never from the simulator.

The environment gives its log once, as transitions with a collector rollout's keys
(``env.logged_transitions()``: env=coat replays each user's self-selected ratings through its own
rules). Training samples minibatches of them; nothing is collected, no simulator step is taken.
The simulator only *evaluates* the greedy policy (validation and test users, the baselines), as
it does for the online algorithms, so their numbers are comparable.

    log = env.logged_transitions()                       once, at construction
    for each optimiser step k:
        batch = the k-th slice of seeded passes over the log      (LoggedBatches)
        loss = the algorithm's loss on it; optimiser step; Polyak-average the target network

The family: one class each on a shared base (`OfflineRLModule`), not one class with a
``method`` switch: each has its own networks and knobs, so each constructor takes exactly
its own (a misspelt or foreign knob fails at instantiation) and ``conf/algo/<name>.yaml``
names its class, as for the online algorithms.

- **BC** (behaviour cloning): ``max log pi(a_logged | s)``. The reference: what the log's own
  behaviour is worth in the test world.
- **CQL** (Kumar et al. 2020, discrete): TD error of Q plus ``alpha * (logsumexp_a Q(s, a) -
  Q(s, a_logged))``, which pushes down the Q-values of actions the log never took
  (TorchRL's ``DiscreteCQLLoss``). Greedy: ``argmax_a Q``.
- **BCQ** (Fujimoto et al. 2019, the discrete variant): a behaviour-cloning head ``G(a | s)``
  beside Q; Q-learning's max, and the greedy policy, only consider actions with
  ``G(a | s) / max_a' G(a' | s) >= threshold``. Written here (`DiscreteBCQLoss`): TorchRL has none.
- **CRR** (Wang et al. 2020): a critic learnt by TD (the target is the target actor's expected
  Q at s'), and an actor learnt by advantage-weighted cross-entropy on the logged actions,
  ``-f(A(s, a)) log pi(a | s)`` with ``f = min(exp(A / beta), ratio_upper_bound)`` ("exp") or
  ``1[A > 0]`` ("binary"). Written here (`DiscreteCRRLoss`). Greedy: ``argmax_a pi``.
- **IQL** (Kostrikov et al. 2021, discrete): V fitted to an expectile of Q(s, a_logged), Q by
  TD to ``r + gamma V(s')``, the actor by advantage-weighted cross-entropy
  (TorchRL's ``DiscreteIQLLoss``). Greedy: ``argmax_a pi``.

Every network reads the history through the run's one encoder and scores the whole catalogue
with `ItemScorer` heads tied to its item table; items the environment's ``action_mask`` hides are
never chosen, never bootstrapped from, and have probability 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import TensorDictModule, TensorDictModuleBase, TensorDictSequential
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset
from torchrl.modules import MaskedCategorical, ProbabilisticActor, QValueActor, QValueModule
from torchrl.objectives import (
    DiscreteCQLLoss, DiscreteIQLLoss, LossModule, SoftUpdate, ValueEstimators,
)
from torchrl.objectives.utils import distance_loss

from lightning_modules.policy import EnvFactory, PolicyModule
from recrl.encoders import HistoryEncoderBase, ItemScorer, RepeatBias
from recrl.observation import HISTORY_KEYS

#: What a transition keeps of the log: the observation, the logged action, and in ``"next"`` the
#: next observation, its reward, the end flags and whether the user clicked the logged item.
OBSERVATION_KEYS = [*HISTORY_KEYS, "action_mask"]
TRANSITION_KEYS = [
    *OBSERVATION_KEYS, "action",
    *(("next", key) for key in (*OBSERVATION_KEYS, "reward", "done", "terminated", "truncated",
                                "click")),
]


# -- the log ----------------------------------------------------------------------------------
def env_choice(env: Any) -> str:
    """``env=<name>`` as the run chose it (Hydra's choice), else the environment's class name."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        name = HydraConfig.get().runtime.choices.get("env")
        if name:
            return f"env={name}"
    return type(env).__name__


def read_logged_transitions(env: Any, algo_name: str, seed: int) -> TensorDict:
    """The environment's log as ``[T]`` transitions (`TRANSITION_KEYS`), on the CPU.

    Refuses, in one line that names the fix, an environment without a log of transitions."""
    if not callable(getattr(env, "logged_transitions", None)):
        raise ValueError(
            f"algo={algo_name} trains from logged transitions; {env_choice(env)} has none: "
            "use env=coat"
        )
    transitions = env.logged_transitions(seed=seed)
    missing = [key for key in TRANSITION_KEYS if key not in transitions.keys(True)]
    if missing or transitions.batch_dims != 1 or transitions.numel() == 0:
        raise ValueError(
            f"{type(env).__name__}.logged_transitions() must return [T > 0] transitions with "
            f"the keys of a collector rollout; missing {missing}, batch size "
            f"{tuple(transitions.batch_size)}"
        )
    return transitions.select(*TRANSITION_KEYS).to("cpu")


def pass_seed(seed: int, rank: int, epoch: int) -> int:
    """A well-mixed seed for one pass over the log (distinct per run seed, DDP rank, pass)."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1, np.uint64)[0])


class LoggedBatches(IterableDataset):
    """Minibatches of the log: batch ``k`` of a run is positions ``[kB, (k+1)B)`` of an endless
    sequence of seeded random passes over the ``T`` transitions (each pass a permutation).

    Every transition is seen once per pass, a log smaller than a batch included; the batch of a
    step depends only on (seed, rank, step), so a resumed run (``start_step`` = the checkpoint's
    step) trains on exactly the batches the saved run would have.
    """

    def __init__(self, transitions: TensorDictBase, batch_size: int, seed: int, rank: int = 0,
                 start_step: Callable[[], int] = lambda: 0) -> None:
        super().__init__()
        self.transitions = transitions
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.start_step = start_step
        self._pass: tuple[int, Tensor] | None = None  # the last permutation drawn

    def permutation(self, epoch: int) -> Tensor:
        if self._pass is None or self._pass[0] != epoch:
            generator = torch.Generator().manual_seed(pass_seed(self.seed, self.rank, epoch))
            self._pass = (epoch, torch.randperm(self.transitions.numel(), generator=generator))
        return self._pass[1]

    def indices(self, step: int) -> Tensor:
        """Indices ``[B]`` into the log of batch ``step``."""
        size, batch = self.transitions.numel(), self.batch_size
        start = step * batch
        first, last = start // size, (start + batch - 1) // size
        order = torch.cat([self.permutation(epoch) for epoch in range(first, last + 1)])
        offset = start - first * size
        return order[offset:offset + batch]

    def batch(self, step: int) -> TensorDictBase:
        index = self.indices(step).to(self.transitions.device)
        return self.transitions[index]

    def __iter__(self) -> Iterator[TensorDictBase]:
        step = self.start_step()
        while True:
            yield self.batch(step)
            step += 1


def _as_is(batch: TensorDictBase) -> TensorDictBase:
    return batch


# -- the base ---------------------------------------------------------------------------------
class OfflineRLModule(PolicyModule):
    """Base of the offline algorithms: the log, its minibatches, the target network's updates.

    Args:
        encoder: the history encoder, shared by every head of the algorithm.
        env_factory: a factory of environments with ``logged_transitions()`` (env=coat); the
            environment itself is only played by evaluation.
        batch_size: transitions per optimiser step.
        reward_scale: logged rewards are multiplied by this before learning (Q-values O(1)).
        max_grad_norm: the gradient norm is clipped to this before each optimiser step.
        seed: the run's seed: the log's random session starts (``logged_transitions(seed)``)
            and the order of the passes over it; DDP rank r samples with ``seed + r``'s order.

    A subclass sets `algo_name`, builds its networks, `greedy_policy` and `losses`; with a target
    network it sets ``self.target_updater`` (a TorchRL ``SoftUpdate``), stepped after every
    optimiser step.
    """

    #: Its conf/algo/ name, for messages.
    algo_name: str = "offline"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 batch_size: int, reward_scale: float = 1.0,
                 max_grad_norm: float | None = 10.0, seed: int = 0) -> None:
        super().__init__(encoder, env_factory, max_grad_norm=max_grad_norm, seed=seed)
        if batch_size < 1:
            raise ValueError(f"algo.batch_size must be >= 1, got {batch_size}")
        if not reward_scale > 0:
            raise ValueError(f"algo.reward_scale must be > 0, got {reward_scale}")
        env = env_factory(num_users=1, seed=seed, user_split="train")
        transitions = read_logged_transitions(env, self.algo_name, seed)
        if env.num_items != encoder.num_items:
            raise ValueError(f"the encoder has {encoder.num_items} items, the log "
                             f"{env.num_items}")
        transitions["next", "reward"] = transitions["next", "reward"] * reward_scale
        #: The log's transitions ``[T]`` (rewards scaled); not in checkpoints: the env rebuilds it.
        self.transitions: TensorDict = transitions
        self.batch_size = batch_size
        self.action_spec = env.action_spec_unbatched
        clicked = transitions["action"][transitions["next", "click"].reshape(-1)]
        self.register_buffer("logged_clicks", torch.bincount(
            clicked, minlength=encoder.num_items + 1).float(), persistent=False)
        self.target_updater: SoftUpdate | None = None

    # -- what a subclass provides -------------------------------------------------------------
    def losses(self, batch: TensorDictBase) -> dict[str, Tensor]:
        """The loss terms of one minibatch; ``"loss"`` is the one minimised."""
        raise NotImplementedError

    # -- what the run asks --------------------------------------------------------------------
    def training_popularity(self) -> Tensor:
        """The log's clicks per item: what ``popular`` ranks (the log is all the agent saw)."""
        return self.logged_clicks

    def progress(self) -> dict[str, int]:
        steps = self._trainer.global_step if self._trainer is not None else 0
        return {"transitions_sampled": steps * self.batch_size * self.world_size,
                "logged_transitions": self.transitions.numel()}

    # -- training -----------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader:
        self.transitions = self.transitions.to(self.device)
        batches = LoggedBatches(self.transitions, self.batch_size, self.seed,
                                rank=self.global_rank,
                                start_step=lambda: self.trainer.global_step)
        return DataLoader(batches, batch_size=None, num_workers=0, collate_fn=_as_is)

    def transfer_batch_to_device(self, batch: TensorDictBase, device: torch.device,
                                 dataloader_idx: int) -> TensorDictBase:
        """The batch itself: it is cut from the log where the module lives."""
        if batch.device == device:
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def training_step(self, batch: TensorDictBase, batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        for name, value in losses.items():
            self.log_loss(f"train/{name}", value, prog_bar=name == "loss")
        return losses["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after the update: a checkpoint of this step holds this step's target network.
        if self.target_updater is not None:
            self.target_updater.step()

    def configure_optimizers(self) -> dict:
        return self.adamw(self.hparams.lr, self.hparams.weight_decay, self.hparams.anneal_lr)


# -- shared pieces ----------------------------------------------------------------------------
def masked_log_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """``log_softmax`` over the allowed items; ``-inf`` where ``mask`` is False."""
    return torch.log_softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)


def gather(values: Tensor, action: Tensor) -> Tensor:
    """``values[..., action]``: ``[B, N+1]``, ``[B]`` -> ``[B]``."""
    return values.gather(-1, action.unsqueeze(-1)).squeeze(-1)


def categorical_actor(module: TensorDictModule, spec: Any) -> ProbabilisticActor:
    """A policy over the allowed items: ``module`` writes ``"logits"`` (and possibly more) from
    the history; greedy (``ExplorationType.DETERMINISTIC``) it takes the most likely allowed
    item."""
    return ProbabilisticActor(
        module,
        in_keys={"logits": "logits", "mask": "action_mask"},
        distribution_class=MaskedCategorical,
        spec=spec,
        return_log_prob=False,
    )


class ScoreHead(nn.Module):
    """One score per item from the encoder's state: ``<W s, e_a> + b_a`` (`ItemScorer`), plus
    ``V(s)`` with ``dueling`` and, with ``repeat_bias``, a learnt offset for every item still in
    the history (`RepeatBias`: the log never repeats an item, and on env=coat a repeat ends the
    session; through the state vector alone that takes long to learn).

    ``pretrained_scale``: a head that starts from a pretrained scorer (``encoder.init_from``)
    starts as this times its scores (a Q head: ``reward_scale``, as DQN's does).
    """

    def __init__(self, encoder: HistoryEncoderBase, *, dueling: bool = False,
                 repeat_bias: bool = False, pretrained_scale: float = 1.0) -> None:
        super().__init__()
        self.scorer = ItemScorer(encoder)
        if self.scorer.from_pretrained and pretrained_scale != 1.0:
            self.scorer.scale_(pretrained_scale)
        self.state_value = nn.Linear(encoder.hidden_size, 1) if dueling else None
        self.repeat_bias = RepeatBias(encoder.history_length) if repeat_bias else None

    def forward(self, state: Tensor, history: Tensor) -> Tensor:
        scores = self.scorer(state)  # [B, N+1]
        if self.repeat_bias is not None:
            scores = self.repeat_bias(scores, history)
        if self.state_value is not None:
            scores = scores + self.state_value(state)
        return scores


class ValueHead(nn.Module):
    """``V(s) = v . s + c``, ``[B, 1]``."""

    def __init__(self, encoder: HistoryEncoderBase) -> None:
        super().__init__()
        self.linear = nn.Linear(encoder.hidden_size, 1)

    def forward(self, state: Tensor, history: Tensor) -> Tensor:
        return self.linear(state)


class Heads(nn.Module):
    """History -> the encoder's state, computed once -> each head's output (a tuple when there
    are several: actor and critic, Q and behaviour cloning)."""

    def __init__(self, encoder: nn.Module, *heads: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList(heads)

    def forward(self, history: Tensor, response: Tensor, watch_time: Tensor
                ) -> Tensor | tuple[Tensor, ...]:
        state = self.encoder(history, response, watch_time)  # [B, H]
        outputs = tuple(head(state, history) for head in self.heads)
        return outputs[0] if len(outputs) == 1 else outputs


def heads_module(encoder: nn.Module, heads: dict[str, nn.Module]) -> TensorDictModule:
    """A `Heads` network as a TensorDictModule: history keys in, one key per head out."""
    return TensorDictModule(Heads(encoder, *heads.values()), in_keys=HISTORY_KEYS,
                            out_keys=list(heads))


class SharedStates(nn.Module):
    """The encoder, computing each state once per loss evaluation inside `caching()`.

    A TorchRL loss calls each of its networks on its own: ``DiscreteIQLLoss`` runs the actor,
    the Q-network (online and target weights) and the V-network seven times a step. Where the
    networks share one encoder, the same history under the same weights gives the same state,
    so inside `caching()` it is computed once (with gradients when a caller needs them) and
    handed to every caller: three passes (online s, target s, online s'), values and gradients
    unchanged. The key is the history tensor (held, so its memory cannot be reused) and the
    storage of the weights in place (the online ones or those a loss swapped in); the cache
    lives for one loss evaluation, as the weights change after it.
    """

    def __init__(self, encoder: HistoryEncoderBase) -> None:
        super().__init__()
        self.encoder = encoder
        self._cache: dict[tuple, tuple[Tensor, Tensor, bool]] | None = None

    @contextmanager
    def caching(self) -> Iterator[None]:
        self._cache = {}
        try:
            yield
        finally:
            self._cache = None

    def forward(self, history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        if self._cache is None:
            return self.encoder(history, response, watch_time)
        key = (history.data_ptr(), tuple(history.shape), response.data_ptr(),
               watch_time.data_ptr(), self.encoder.state_token.data_ptr())
        cached = self._cache.get(key)
        if cached is not None and (cached[2] or not torch.is_grad_enabled()):
            return cached[1]
        state = self.encoder(history, response, watch_time)
        self._cache[key] = (history, state, torch.is_grad_enabled())
        return state


def check_target_tau(target_tau: float) -> None:
    if not 0 < target_tau <= 1:
        raise ValueError(f"algo.target_tau must be in (0, 1], got {target_tau}")


def check_gamma(gamma: float) -> None:
    if not 0 <= gamma < 1:
        raise ValueError(f"algo.gamma must be in [0, 1), got {gamma}")


# -- BC ---------------------------------------------------------------------------------------
class BCModule(OfflineRLModule):
    """Behaviour cloning: the logged action's cross-entropy under a categorical policy over the
    allowed items (rewards are not read). See ``conf/algo/bc.yaml``.

    TorchRL's ``BCLoss`` reads a discrete prediction as class logits at the action key, where a
    ``ProbabilisticActor`` writes its sampled action: the negative log-likelihood of the actor's
    own distribution is written here instead (what ``BCLoss`` computes for a distribution).
    """

    algo_name = "bc"
    score_key = "logits"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 batch_size: int = 128, repeat_bias: bool = False, lr: float = 1e-3,
                 weight_decay: float = 0.0, anneal_lr: bool = True, max_grad_norm: float = 10.0,
                 seed: int = 0) -> None:
        super().__init__(encoder, env_factory, batch_size=batch_size,
                         max_grad_norm=max_grad_norm, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        self.policy = categorical_actor(
            heads_module(encoder, {"logits": ScoreHead(encoder, repeat_bias=repeat_bias)}),
            self.action_spec)

    @property
    def greedy_policy(self) -> ProbabilisticActor:
        return self.policy

    def losses(self, batch: TensorDictBase) -> dict[str, Tensor]:
        log_prob = self.policy.get_dist(batch.select(*OBSERVATION_KEYS)).log_prob(batch["action"])
        return {"loss": -log_prob.mean()}


# -- CQL --------------------------------------------------------------------------------------
class CQLModule(OfflineRLModule):
    """Discrete CQL on a (dueling) Q-network, TorchRL's ``DiscreteCQLLoss``: TD(0) towards
    ``r + gamma max_a' Q_target(s', a')`` plus ``alpha`` times the CQL term. See
    ``conf/algo/cql.yaml``."""

    algo_name = "cql"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 batch_size: int = 128, gamma: float = 0.9, reward_scale: float = 0.1,
                 alpha: float = 1.0, dueling: bool = True, repeat_bias: bool = False,
                 loss_function: str = "l2", target_tau: float = 0.005, lr: float = 1e-3,
                 weight_decay: float = 0.0, anneal_lr: bool = True, max_grad_norm: float = 10.0,
                 seed: int = 0) -> None:
        super().__init__(encoder, env_factory, batch_size=batch_size, reward_scale=reward_scale,
                         max_grad_norm=max_grad_norm, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        check_gamma(gamma)
        check_target_tau(target_tau)
        if alpha < 0:
            raise ValueError(f"algo.alpha must be >= 0, got {alpha}")
        self.policy = QValueActor(
            heads_module(encoder, {"action_value": ScoreHead(
                encoder, dueling=dueling, repeat_bias=repeat_bias,
                pretrained_scale=reward_scale)}),
            spec=self.action_spec, action_space="categorical", action_mask_key="action_mask",
        )
        self.loss_module = DiscreteCQLLoss(self.policy, loss_function=loss_function,
                                           delay_value=True, action_space="categorical")
        self.loss_module.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
        self.target_updater = SoftUpdate(self.loss_module, tau=target_tau)

    @property
    def greedy_policy(self) -> QValueActor:
        return self.policy

    def losses(self, batch: TensorDictBase) -> dict[str, Tensor]:
        out = self.loss_module(batch)
        loss = out["loss_qvalue"] + self.hparams.alpha * out["loss_cql"]
        return {"loss_qvalue": out["loss_qvalue"], "loss_cql": out["loss_cql"], "loss": loss}


# -- BCQ --------------------------------------------------------------------------------------
def likely_actions(imitation_logits: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """BCQ's filter: the allowed items whose behaviour probability is at least ``threshold``
    times the most likely item's (that one always passes)."""
    log_probs = masked_log_softmax(imitation_logits, mask)
    ratio = log_probs - log_probs.max(dim=-1, keepdim=True).values
    return mask & (ratio >= math.log(threshold) if threshold > 0 else mask)


class LikelyActions(TensorDictModuleBase):
    """Writes BCQ's filter of the allowed items (`likely_actions`) as ``"bcq_mask"``."""

    in_keys = ["imitation_logits", "action_mask"]
    out_keys = ["bcq_mask"]

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return tensordict.set("bcq_mask", likely_actions(
            tensordict["imitation_logits"], tensordict["action_mask"], self.threshold))


class _TargetNetworkLoss(LossModule):
    """What `DiscreteBCQLoss` and `DiscreteCRRLoss` share: one network (``network``) with a
    Polyak-averaged target copy, the keys they read, and the one-step TD target."""

    @dataclass
    class _AcceptedKeys:
        action: NestedKey = "action"
        action_mask: NestedKey = "action_mask"
        reward: NestedKey = "reward"
        terminated: NestedKey = "terminated"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    network: TensorDictModule
    network_params: TensorDictParams
    target_network_params: TensorDictParams

    def __init__(self, network: TensorDictModule, *, gamma: float, loss_function: str) -> None:
        super().__init__()
        self.convert_to_functional(network, "network", create_target_params=True)
        self.gamma = gamma
        self.loss_function = loss_function

    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        pass

    def target_outputs(self, next_td: TensorDictBase) -> TensorDictBase:
        """The target network's outputs at the next observations (call under no_grad)."""
        with self.target_network_params.to_module(self.network):
            return self.network(next_td.select(*self.network.in_keys).copy())

    def td_target(self, next_td: TensorDictBase, next_value: Tensor) -> Tensor:
        """``r + gamma (1 - terminated) next_value``, shaped like ``next_value``."""
        not_terminal = (~next_td[self.tensor_keys.terminated]).reshape(next_value.shape).float()
        reward = next_td[self.tensor_keys.reward].reshape(next_value.shape)
        return reward + self.gamma * not_terminal * next_value


class DiscreteBCQLoss(_TargetNetworkLoss):
    """Discrete BCQ's loss (Fujimoto et al. 2019, "Benchmarking batch deep RL algorithms"):

        a' = argmax over a with G(a | s') / max G(. | s') >= threshold of Q(s', a)   (online)
        y = r + gamma (1 - terminated) Q_target(s', a')
        loss = distance(Q(s, a), y) + CE(G(. | s), a) + imitation_penalty * mean(logits^2)

    ``network`` writes ``"action_value"`` and ``"imitation_logits"`` from the observation; its
    target copy is Polyak-averaged by ``SoftUpdate``.
    """

    def __init__(self, network: TensorDictModule, *, gamma: float, threshold: float,
                 imitation_penalty: float, loss_function: str = "smooth_l1") -> None:
        super().__init__(network, gamma=gamma, loss_function=loss_function)
        self.threshold = threshold
        self.imitation_penalty = imitation_penalty

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        observation = tensordict.select(*self.network.in_keys)
        out = self.network(observation.copy())  # the online weights (the module's own)
        q, logits = out["action_value"], out["imitation_logits"]
        action = tensordict[keys.action]
        next_td = tensordict["next"]
        with torch.no_grad():
            online = self.network(next_td.select(*self.network.in_keys).copy())
            allowed = likely_actions(online["imitation_logits"], next_td[keys.action_mask],
                                     self.threshold)
            next_action = online["action_value"].masked_fill(~allowed, float("-inf")).argmax(-1)
            next_q = gather(self.target_outputs(next_td)["action_value"], next_action)
            value_target = self.td_target(next_td, next_q)
        q_loss = distance_loss(gather(q, action), value_target, self.loss_function).mean()
        log_probs = masked_log_softmax(logits, tensordict[keys.action_mask])
        imitation_loss = -gather(log_probs, action).mean()
        penalty = logits.pow(2).mean()
        return TensorDict({"loss_qvalue": q_loss, "loss_imitation": imitation_loss,
                           "loss_penalty": penalty,
                           "loss": q_loss + imitation_loss + self.imitation_penalty * penalty})


class BCQModule(OfflineRLModule):
    """Discrete BCQ (`DiscreteBCQLoss`); its greedy policy is ``argmax Q`` over the items the
    behaviour-cloning head finds likely enough. See ``conf/algo/bcq.yaml``."""

    algo_name = "bcq"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 batch_size: int = 128, gamma: float = 0.9, reward_scale: float = 0.1,
                 threshold: float = 0.3, imitation_penalty: float = 0.01, dueling: bool = True,
                 repeat_bias: bool = False, loss_function: str = "smooth_l1",
                 target_tau: float = 0.005, lr: float = 1e-3, weight_decay: float = 0.0,
                 anneal_lr: bool = True, max_grad_norm: float = 10.0, seed: int = 0) -> None:
        super().__init__(encoder, env_factory, batch_size=batch_size, reward_scale=reward_scale,
                         max_grad_norm=max_grad_norm, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        check_gamma(gamma)
        check_target_tau(target_tau)
        if not 0 <= threshold <= 1:
            raise ValueError(f"algo.threshold must be in [0, 1], got {threshold}")
        self.network = heads_module(encoder, {
            "action_value": ScoreHead(encoder, dueling=dueling, repeat_bias=repeat_bias,
                                      pretrained_scale=reward_scale),
            "imitation_logits": ScoreHead(encoder, repeat_bias=repeat_bias),
        })
        self.policy = TensorDictSequential(
            self.network, LikelyActions(threshold),
            QValueModule(action_space="categorical", action_mask_key="bcq_mask",
                         spec=self.action_spec),
        )
        self.loss_module = DiscreteBCQLoss(self.network, gamma=gamma, threshold=threshold,
                                           imitation_penalty=imitation_penalty,
                                           loss_function=loss_function)
        self.target_updater = SoftUpdate(self.loss_module, tau=target_tau)

    @property
    def greedy_policy(self) -> TensorDictSequential:
        return self.policy

    def losses(self, batch: TensorDictBase) -> dict[str, Tensor]:
        return dict(self.loss_module(batch).items())


# -- CRR --------------------------------------------------------------------------------------
#: ``algo.advantage_filter`` of CRR: how the advantage weighs a logged action.
CRR_FILTERS = ("exp", "binary")


class DiscreteCRRLoss(_TargetNetworkLoss):
    """Critic-regularised regression (Wang et al. 2020), discrete:

        y = r + gamma (1 - terminated) sum_a' pi_target(a' | s') Q_target(s', a')
        critic = distance(Q(s, a), y)  [+ cql_weight (logsumexp_a Q(s, .) - Q(s, a))]
        A = Q(s, a) - sum_a' pi(a' | s) Q(s, a')                        (no gradient)
        actor = -f(A) log pi(a | s),  f = min(exp(A / beta), ratio_upper_bound) | 1[A > 0]

    The optional CQL term is Tianshou's DiscreteCRRPolicy's (``min_q_weight``, 10 there), which
    EasyRL4Rec's CRR ran with. ``network`` writes ``"logits"`` and ``"action_value"``.
    """

    def __init__(self, network: TensorDictModule, *, gamma: float, beta: float,
                 advantage_filter: str, ratio_upper_bound: float, cql_weight: float,
                 loss_function: str = "smooth_l1") -> None:
        super().__init__(network, gamma=gamma, loss_function=loss_function)
        self.beta = beta
        self.advantage_filter = advantage_filter
        self.ratio_upper_bound = ratio_upper_bound
        self.cql_weight = cql_weight

    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        keys = self.tensor_keys
        out = self.network(tensordict.select(*self.network.in_keys).copy())
        logits, q = out["logits"], out["action_value"]
        action, mask = tensordict[keys.action], tensordict[keys.action_mask]
        next_td = tensordict["next"]
        q_taken = gather(q, action)
        with torch.no_grad():
            target = self.target_outputs(next_td)
            next_mask = next_td[keys.action_mask]
            next_pi = masked_log_softmax(target["logits"], next_mask).exp()
            next_value = (next_pi * target["action_value"].masked_fill(~next_mask, 0.0)).sum(-1)
            value_target = self.td_target(next_td, next_value)
        critic_loss = distance_loss(q_taken, value_target, self.loss_function).mean()
        log_pi = masked_log_softmax(logits, mask)
        with torch.no_grad():
            value = (log_pi.exp() * q.masked_fill(~mask, 0.0)).sum(-1)
            advantage = q_taken - value
            if self.advantage_filter == "exp":
                weight = (advantage / self.beta).exp().clamp(max=self.ratio_upper_bound)
            else:
                weight = (advantage > 0).float()
        actor_loss = -(weight * gather(log_pi, action)).mean()
        losses = {"loss_actor": actor_loss, "loss_critic": critic_loss}
        loss = actor_loss + critic_loss
        if self.cql_weight > 0:
            cql = (torch.logsumexp(q.masked_fill(~mask, float("-inf")), -1) - q_taken).mean()
            losses["loss_cql"] = cql
            loss = loss + self.cql_weight * cql
        losses["loss"] = loss
        return TensorDict(losses)


class CRRModule(OfflineRLModule):
    """CRR (`DiscreteCRRLoss`) with actor and critic heads on one encoder; its greedy policy is
    the actor's most likely item. See ``conf/algo/crr.yaml``."""

    algo_name = "crr"
    score_key = "logits"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 batch_size: int = 128, gamma: float = 0.9, reward_scale: float = 0.1,
                 advantage_filter: str = "exp", beta: float = 0.1,
                 ratio_upper_bound: float = 20.0, cql_weight: float = 0.0,
                 dueling: bool = True, repeat_bias: bool = False, loss_function: str = "smooth_l1",
                 target_tau: float = 0.005, lr: float = 1e-3, weight_decay: float = 0.0,
                 anneal_lr: bool = True, max_grad_norm: float = 10.0, seed: int = 0) -> None:
        super().__init__(encoder, env_factory, batch_size=batch_size, reward_scale=reward_scale,
                         max_grad_norm=max_grad_norm, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        check_gamma(gamma)
        check_target_tau(target_tau)
        if advantage_filter not in CRR_FILTERS:
            raise ValueError(f"algo.advantage_filter={advantage_filter!r}: choose "
                             f"{' | '.join(CRR_FILTERS)}")
        if not beta > 0 or not ratio_upper_bound > 0 or cql_weight < 0:
            raise ValueError(f"algo.beta and algo.ratio_upper_bound must be > 0 and "
                             f"algo.cql_weight >= 0, got {beta}, {ratio_upper_bound}, "
                             f"{cql_weight}")
        self.network = heads_module(encoder, {
            "logits": ScoreHead(encoder, repeat_bias=repeat_bias),
            "action_value": ScoreHead(encoder, dueling=dueling, repeat_bias=repeat_bias,
                                      pretrained_scale=reward_scale),
        })
        self.policy = categorical_actor(self.network, self.action_spec)
        self.loss_module = DiscreteCRRLoss(
            self.network, gamma=gamma, beta=beta, advantage_filter=advantage_filter,
            ratio_upper_bound=ratio_upper_bound, cql_weight=cql_weight,
            loss_function=loss_function)
        self.target_updater = SoftUpdate(self.loss_module, tau=target_tau)

    @property
    def greedy_policy(self) -> ProbabilisticActor:
        return self.policy

    def losses(self, batch: TensorDictBase) -> dict[str, Tensor]:
        return dict(self.loss_module(batch).items())


# -- IQL --------------------------------------------------------------------------------------
class IQLModule(OfflineRLModule):
    """Discrete IQL, TorchRL's ``DiscreteIQLLoss``: actor, Q and V heads on one encoder (whose
    states the loss's separate network calls share: `SharedStates`), one Q-network (TorchRL's
    ensemble of two would resample a second encoder). See ``conf/algo/iql.yaml``."""

    algo_name = "iql"
    score_key = "logits"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 batch_size: int = 128, gamma: float = 0.9, reward_scale: float = 0.1,
                 expectile: float = 0.7, temperature: float = 10.0, dueling: bool = True,
                 repeat_bias: bool = False, loss_function: str = "smooth_l1",
                 target_tau: float = 0.005, lr: float = 1e-3, weight_decay: float = 0.0,
                 anneal_lr: bool = True, max_grad_norm: float = 10.0, seed: int = 0) -> None:
        super().__init__(encoder, env_factory, batch_size=batch_size, reward_scale=reward_scale,
                         max_grad_norm=max_grad_norm, seed=seed)
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        check_gamma(gamma)
        check_target_tau(target_tau)
        if not 0 < expectile < 1 or not temperature > 0:
            raise ValueError(f"algo.expectile must be in (0, 1) and algo.temperature > 0, got "
                             f"{expectile}, {temperature}")
        self.states = SharedStates(encoder)
        self.policy = categorical_actor(
            heads_module(self.states, {"logits": ScoreHead(encoder, repeat_bias=repeat_bias)}),
            self.action_spec)
        self.q_network = heads_module(self.states, {"state_action_value": ScoreHead(
            encoder, dueling=dueling, repeat_bias=repeat_bias, pretrained_scale=reward_scale)})
        self.value_network = heads_module(self.states, {"state_value": ValueHead(encoder)})
        self.loss_module = DiscreteIQLLoss(
            self.policy, self.q_network, self.value_network, action_space="categorical",
            num_qvalue_nets=1, loss_function=loss_function, temperature=temperature,
            expectile=expectile)
        # The Q-network is called in a loop over its (single) copy, not through torch.vmap.
        self.loss_module.deactivate_vmap = True
        self.loss_module._make_vmap()
        self.loss_module.make_value_estimator(ValueEstimators.TD0, gamma=gamma)
        self.target_updater = SoftUpdate(self.loss_module, tau=target_tau)

    @property
    def greedy_policy(self) -> ProbabilisticActor:
        return self.policy

    def losses(self, batch: TensorDictBase) -> dict[str, Tensor]:
        with self.states.caching():
            out = self.loss_module(batch)
        terms = {name: out[name] for name in ("loss_actor", "loss_qvalue", "loss_value")}
        return {**terms, "loss": sum(terms.values())}
