"""The policy module: what evaluation, baselines, ranking metrics and serving read.

A ``PolicyModule`` owns a history encoder, the environment factory its policy acts in, the greedy
policy and its score of every item, and the training plumbing every algorithm shares (loss terms
logged and checked for NaN / inf, gradient clipping, AdamW). It also says how a run of it is
validated and what its final results are (`make_validation`, `final_results`), so the run
(``recrl/run.py``) asks the module instead of testing its type.

Algorithms build on it: ``lightning_modules/online.py`` adds collection in a simulator (DQN, PPO,
REINFORCE); ``lightning_modules/pretrain.py`` trains the encoder on logged windows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig
from tensordict import TensorDict
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torchrl.envs import EnvBase
from torchrl.envs.utils import ExplorationType, set_exploration_type

from recrl.callbacks import EveryNSteps, PeriodicEvaluation
from recrl.data import Sequences
from recrl.encoders import HistoryEncoderBase
from recrl.observation import HISTORY_KEYS
from recrl.results import FinishedRun, RunResults, policy_results

#: ``env_factory(num_users=..., seed=..., user_split=..., device=...)`` builds a batched
#: recommendation environment.
EnvFactory = Callable[..., EnvBase]


class PolicyModule(L.LightningModule):
    """A recommendation policy over a history encoder, and the plumbing its training shares.

    Args:
        encoder: the history encoder (its item table is shared with the scoring heads).
        env_factory: builds the environment the policy acts in (evaluation users come from its
            held-out split).
        max_grad_norm: the gradient norm is clipped to this before each optimiser step; None
            leaves gradients alone. Each algorithm has its own usual value, so it lives in
            ``conf/algo/``, not the trainer.
        seed: the algorithm's seed (training users, data order).
    """

    #: Where the greedy policy writes its score of every item (Q-values, logits, ...).
    score_key: str = "action_value"
    #: What the module recommends per step ("item", "slate" or "both"); `recrl.build` checks it against
    #: the env's ``slate_size`` before anything is built (`recrl.checks.check_slate_support`).
    slate_support: str = "item"

    def __init__(self, encoder: HistoryEncoderBase, env_factory: EnvFactory, *,
                 max_grad_norm: float | None = None, seed: int = 0) -> None:
        super().__init__()
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"algo.max_grad_norm must be > 0, got {max_grad_norm}")
        self.encoder = encoder
        self.env_factory = env_factory
        self.max_grad_norm = max_grad_norm
        self.seed = seed
        #: Loss terms of the current training step (``log_loss``), checked for NaN / inf before
        #: the optimiser applies the step (``NonFiniteGuard``).
        self.step_losses: dict[str, Tensor] = {}
        #: The parameters with a gradient in the current step and the total 2-norm of those
        #: gradients, when the NaN guard has summed them already (it runs just before clipping):
        #: `configure_gradient_clipping` scales by it instead of walking and summing again.
        self.step_gradient_norm: tuple[list[Tensor], Tensor] | None = None
        #: Why a resumed run could not continue the saved run exactly (None: it did, or it was
        #: not resumed); recorded in results.json.
        self.resumed_with_fresh_users: str | None = None

    @property
    def world_size(self) -> int:
        """Number of DDP processes training together (1 without a trainer or without DDP)."""
        return self._trainer.world_size if self._trainer is not None else 1

    # -- the policy ---------------------------------------------------------------------------
    @property
    def greedy_policy(self) -> TensorDictModuleBase:
        """The deterministic policy that is evaluated and served (no exploration); it writes
        ``score_key`` and ``"action"``."""
        raise NotImplementedError

    @torch.no_grad()
    def item_scores(self, history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        """The greedy policy's score of every item after each ``[B, L]`` history, ``[B, N+1]``.

        What offline ranking metrics rank: the policy's preference order over the catalogue.
        """
        mask = torch.ones(history.shape[0], self.encoder.num_items + 1, dtype=torch.bool,
                          device=history.device)
        mask[:, 0] = False
        td = TensorDict(dict(zip(HISTORY_KEYS, (history, response, watch_time)),
                             action_mask=mask), batch_size=history.shape[:1])
        with set_exploration_type(ExplorationType.DETERMINISTIC):
            return self.greedy_policy(td)[self.score_key]

    def policy_weights(self) -> dict[str, Tensor]:
        """The live tensors the greedy policy computes with, by name: what
        ``evaluation.select=best`` keeps a copy of and loads back. Trained parameters by default."""
        return dict(self.named_parameters())

    def selection_snapshot(self) -> dict[str, Any]:
        """What ``evaluation.select=best`` keeps of a validation point to come back to it:
        detached CPU copies of `policy_weights` (kept weights must not follow training on)."""
        return {"weights": {name: tensor.detach().to("cpu", copy=True)
                            for name, tensor in self.policy_weights().items()}}

    def restore_selection(self, snapshot: dict[str, Any]) -> None:
        """Loads what `selection_snapshot` kept back into the live module."""
        with torch.no_grad():
            for name, tensor in self.policy_weights().items():
                tensor.copy_(snapshot["weights"][name])

    def make_env(self, num_users: int, seed: int, split: str = "train") -> EnvBase:
        """``split``: "train" users for training, "validation" users for choosing weights and
        hyper-parameters, "test" users for the final evaluation (simulators of logged data keep
        the three apart and meet each evaluation user once; synthetic users are fresh draws).

        The env lives where the module does (the GPU under ``hardware=gpu`` / ``ddp``), so the
        collector and the evaluation step users and policy without copying between devices. A
        simulator on the GPU draws its users from the GPU's random generator: the same seed
        gives the same users on every run *on that kind of device*, not the CPU's users.
        """
        return self.env_factory(num_users=num_users, seed=seed, user_split=split,
                                device=self.device)

    # -- what the run asks -------------------------------------------------------------------
    def training_popularity(self) -> Tensor | None:
        """Clicks per item ``[N+1]`` the module saw while training (all DDP ranks), which the
        ``popular`` baseline ranks; None when it saw no clicks (then there is no such baseline,
        rather than a most-popular list of zeros). A collective under DDP: call on every rank."""
        return None

    def progress(self) -> dict[str, int]:
        """How much experience the module has trained on, beside the optimiser step (online RL:
        ``{"frames": ...}``); recorded with every validation point and in the results."""
        return {}

    def make_validation(self, evaluation: DictConfig, sequences: Sequences | None
                        ) -> EveryNSteps:
        """The callback that validates this module during training: the greedy policy's return
        on validation users of the simulator (``evaluation`` is the run's config node)."""
        return PeriodicEvaluation(
            every_n_steps=evaluation.every_n_steps, num_users=evaluation.num_users,
            seed=evaluation.val_seed, max_steps=evaluation.max_steps,
            keep_best=evaluation.select == "best",
        )

    def final_results(self, run: FinishedRun) -> RunResults | None:
        """What ``results.json`` holds after training: the greedy policy and every baseline on
        the held-out test users (and, on logged data, offline rankings). Called on every DDP
        process; None on all but the first."""
        return policy_results(self, run)

    # -- training plumbing --------------------------------------------------------------------
    @property
    def should_log(self) -> bool:
        """Whether the loggers write this training step's ``train/*`` metrics.

        Lightning writes them every ``trainer.log_every_n_steps`` steps and drops what
        ``self.log`` was given on the others, after ~1 ms a call of bookkeeping: training code
        logs only when this is true (``log_loss``, ``log_progress``, the gradient norm), so the
        written rows are those of logging every step. It is Lightning's own decision
        (``should_update_logs``: every n-th step, or a stopping one), read during the step;
        False without a trainer (nothing would be logged).
        """
        trainer = self._trainer
        if trainer is None:
            return False
        return trainer._logger_connector.should_update_logs or bool(trainer.fast_dev_run)

    def log_loss(self, name: str, value: Tensor, **kwargs: Any) -> None:
        """Records a loss term for the NaN / inf check before the step (every step), and
        ``self.log``s it on the steps the loggers write (`should_log`)."""
        self.step_losses[name] = value.detach()
        if self.should_log:
            self.log(name, value, **kwargs)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ) -> None:
        """Clips to ``max_grad_norm`` and logs the norm before clipping (a divergence shows here
        first).

        The norm is the NaN guard's (`step_gradient_norm`), the same sum of the same gradients,
        unless a subclass's ``on_before_optimizer_step``, which runs between the two, may have
        changed them since.
        """
        handed, self.step_gradient_norm = self.step_gradient_norm, None
        if self.max_grad_norm is None:
            return
        if handed is not None and (type(self).on_before_optimizer_step
                                   is L.LightningModule.on_before_optimizer_step):
            params, norm = handed
            torch.nn.utils.clip_grads_with_norm_(params, self.max_grad_norm, norm)
        else:
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), self.max_grad_norm)
        if self.should_log:
            self.log("train/grad_norm", norm)

    def adamw(self, lr: float, weight_decay: float, anneal_lr: bool) -> dict:
        """AdamW over all parameters; with ``anneal_lr`` the rate decays linearly to 0 over
        ``trainer.max_steps`` (Schulman et al. 2017; CleanRL's default), which settles the
        greedy policy of a long run instead of leaving it to jump between evaluations."""
        # A DQN target network lives in its loss module as buffers, so it is not among these.
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        if not anneal_lr:
            return {"optimizer": optimizer}
        total_steps = max(1, self.trainer.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(0.0, 1.0 - step / total_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
