"""Online RL: a policy module trained from what it collects in a simulator.

An ``OnlineRLModule`` adds to `PolicyModule` the collector that feeds training (through
``recrl.collect.RolloutStream``), the running count of environment frames, item click counts
(the ``popular`` baseline ranks them), the resume hooks of the training stream and the DDP
reductions. Subclasses (DQN, PPO, REINFORCE) provide the collection policy and turn rollouts into
training batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_warn
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import Tensor
from torch.utils.data import DataLoader
from torchrl.collectors import Collector

from lightning_modules.policy import EnvFactory, PolicyModule
from recrl.checkpoint_io import RESUME_KEY
from recrl.collect import RolloutStream, rollout_dataloader
from recrl.encoders import HistoryEncoderBase
from recrl.observation import chosen_position

#: Test-only: when this environment variable is set, every rank writes its final ``state_dict``,
#: its own frame count and a fingerprint of its first rollout to ``<run folder>/rank<k>.pt``
#: (tests/test_ddp.py checks with it that DDP ranks agree on weights and differ in data).
RANK_DUMP_ENV = "RECRL_TEST_DUMP_RANKS"


def chosen_items(rollout: TensorDictBase) -> Tensor:
    """The items the users clicked in a raw rollout, 1-D int64: the recommended item where
    ``("next", "click")``, or for slates the slate's item at the chosen position."""
    action, click = rollout["action"], rollout["next", "click"]
    if action.dim() == click.dim():  # one item per step
        return action[click]
    position = chosen_position(rollout["next", "history_response"], action.shape[-1])
    return action[click].gather(-1, position[click][:, None]).squeeze(-1)


class OnlineRLModule(PolicyModule):
    """Base of the online RL algorithms: collection in the simulator and its bookkeeping.

    Args:
        encoder: the history encoder (its item table is shared with the scoring head).
        env_factory: builds the training environment for ``num_envs`` users.
        num_envs: users simulated in parallel by the collector (one batched env).
        frames_per_batch: frames per collected rollout (``num_envs`` x rollout steps).
        max_grad_norm: the gradient norm is clipped to this before each optimiser step (each
            algorithm has its own usual value, so it lives in ``conf/algo/``, not the trainer).
        seed: seed of the training users; DDP rank r uses ``seed + r``.

    Under DDP (``hardware=ddp`` / ``ddp_cpu``) every rank runs its own collector on its own
    users, all ranks collect rollouts of the same size in lockstep, and ``frames`` counts the
    frames of *all* ranks (so frame budgets in the config mean total frames, whatever the number
    of devices). ``item_clicks`` counts this rank's clicks during training and is summed over
    ranks (all-reduce) when a checkpoint is written and when training ends.

    Checkpoints (single process) also hold, under ``recrl.checkpoint_io.RESUME_KEY``, the
    training stream's position and the algorithm's own state (``resume_state``), so that a run
    resumed from one goes on exactly as the saved run would have (docs/resuming.md).
    """

    def __init__(
        self,
        encoder: HistoryEncoderBase,
        env_factory: EnvFactory,
        *,
        num_envs: int,
        frames_per_batch: int,
        max_grad_norm: float = 10.0,
        seed: int = 0,
    ) -> None:
        super().__init__(encoder, env_factory, max_grad_norm=max_grad_norm, seed=seed)
        if frames_per_batch % num_envs:
            raise ValueError(
                f"algo.frames_per_batch ({frames_per_batch}) must be a multiple of "
                f"algo.num_envs ({num_envs}): each rollout steps every user the same number of times"
            )
        self.num_envs = num_envs
        self.frames_per_batch = frames_per_batch
        num_items = encoder.num_items
        # Checkpointed with the model: the popularity baseline and the frame count survive resume.
        self.register_buffer("item_clicks", torch.zeros(num_items + 1))
        self.register_buffer("frames", torch.zeros((), dtype=torch.long))
        self._last_rollout_time: float | None = None
        self.frames_per_s: float | None = None
        self.local_frames = 0  # frames this rank collected in this process
        self._first_rollout: dict[str, Tensor] | None = None  # for the test-only rank dump
        self._stream: RolloutStream | None = None  # the live training stream
        self._stream_resume: dict | None = None  # its saved position, from a checkpoint

    # -- what an online algorithm provides ----------------------------------------------------
    @property
    def collection_policy(self) -> TensorDictModuleBase:
        """The policy that acts in the training environment (with exploration)."""
        raise NotImplementedError

    def rollout_to_batches(self, rollout: TensorDictBase) -> Iterator[TensorDictBase]:
        """Turns one collected rollout ``[num_envs, steps]`` into training batches."""
        raise NotImplementedError

    def batching_state(self) -> dict | None:
        """Where ``rollout_to_batches`` stands inside the current rollout (plain data), for
        checkpoints; None when a rollout's batches never depend on anything but the rollout."""
        return None

    def resume_batching(self, state: dict) -> Iterator[TensorDictBase]:
        """Yields the batches of the interrupted rollout that ``state`` had not reached yet."""
        return iter(())

    def resume_state(self) -> dict:
        """The algorithm's own state for an exact resume (plain data); subclasses add to it."""
        return {}

    def load_resume_state(self, state: dict) -> None:
        """Restores what ``resume_state`` returned."""

    # -- shared plumbing ---------------------------------------------------------------------
    def collection_seed(self) -> int:
        """Seed of this process's training users.

        The run's seed, plus the rank under DDP. A run that cannot continue its users' stream
        (DDP resumed at step s: the ranks' streams are not in the checkpoint; a checkpoint from
        another kind of device) starts fresh users from a seed that moves with s, so that they
        are new users rather than the run's first ones again, distinct across ranks and resume
        points; at step 0 it is the plain seed.
        """
        # The rank is read here, in the training process, not in a DataLoader worker.
        seed = self.seed + self.global_rank
        fresh_users = self.world_size > 1 or self.resumed_with_fresh_users is not None
        if fresh_users and self._trainer is not None:
            seed += self.world_size * self.trainer.global_step
        return seed

    def _make_collector(self) -> Collector:
        seed = self.collection_seed()
        env = self.make_env(self.num_envs, seed=seed)
        if self.world_size > 1:
            # Exploration noise too is rank's own (Lightning seeds every rank alike); DDP has
            # already made the weights equal. A single process keeps the run seed's stream.
            torch.manual_seed(seed)
        return Collector(
            env,
            self.collection_policy,
            frames_per_batch=self.frames_per_batch,
            total_frames=-1,
            auto_register_policy_transforms=False,
        )

    def _count_and_batch(self, rollout: TensorDictBase) -> Iterator[TensorDictBase]:
        """Book-keeping common to all algorithms, then the algorithm's own batching.

        Runs on the raw rollout, where ``("next", "click")`` answers ``"action"`` (an n-step
        transform applied later shifts ``"next"`` forward).
        """
        clicked_items = chosen_items(rollout)
        self.item_clicks += torch.bincount(clicked_items, minlength=self.item_clicks.numel())
        if self._first_rollout is None and os.environ.get(RANK_DUMP_ENV):
            self._first_rollout = {
                "action": rollout["action"].clone(), "reward": rollout["next", "reward"].clone(),
            }
        # Every rank collects a rollout of this size at the same time: the total is exact
        # without a collective per rollout.
        self.frames += rollout.numel() * self.world_size
        self.local_frames += rollout.numel()
        now = time.perf_counter()
        if self._last_rollout_time is not None:
            # CleanRL's SPS: environment frames per second of wall time, collection + training
            # (all ranks together).
            # Logged from training_step: Lightning accepts self.log only inside its hooks.
            self.frames_per_s = rollout.numel() * self.world_size / (now - self._last_rollout_time)
        self._last_rollout_time = now
        yield from self.rollout_to_batches(rollout)

    def total_item_clicks(self) -> Tensor:
        """Item clicks summed over all DDP ranks (a collective: call on every rank)."""
        clicks = self.item_clicks.clone()
        if self.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(clicks, op=torch.distributed.ReduceOp.SUM)
        return clicks

    # -- what the run asks -------------------------------------------------------------------
    def training_popularity(self) -> Tensor:
        # All ranks' clicks once training has ended (on_train_end reduces them); those of the
        # selected step after evaluation.select=best (restore_selection).
        return self.item_clicks

    def progress(self) -> dict[str, int]:
        return {"frames": int(self.frames)}

    def selection_snapshot(self) -> dict[str, Tensor | dict[str, Tensor]]:
        # Also the clicks `popular` ranks as far as training had got: the selected weights are
        # then compared with the most-popular list of the same frames. All ranks' clicks
        # together (a collective: every rank validates at the same step).
        return {**super().selection_snapshot(),
                "item_clicks": self.total_item_clicks().detach().to("cpu", copy=True)}

    def restore_selection(self, snapshot: dict) -> None:
        super().restore_selection(snapshot)
        if "item_clicks" in snapshot:  # not in checkpoints written before it was kept
            with torch.no_grad():
                self.item_clicks.copy_(snapshot["item_clicks"])

    def on_train_start(self) -> None:
        # On resume every rank loads the total click counts: only rank 0 carries them on.
        if self.global_rank > 0:
            self.item_clicks.zero_()

    def transfer_batch_to_device(self, batch: TensorDictBase, device: torch.device,
                                 dataloader_idx: int) -> TensorDictBase:
        """The batch itself when every tensor in it is on ``device`` already, as the rollout
        stream's are (the collector steps an env that lives where the module does).

        Lightning's default rebuilds a TensorDict that has no device of its own (a PPO
        minibatch cut from a rollout) leaf by leaf even when nothing moves: ~0.7 ms of a small
        PPO step on the CPU.
        """
        if batch.device == device or all(t.device == device for t in batch.values(True, True)):
            return batch
        return super().transfer_batch_to_device(batch, device, dataloader_idx)

    def on_train_batch_start(self, batch: TensorDictBase, batch_idx: int) -> None:
        if self._stream is not None:
            self._stream.mark_consumed()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning builds the checkpoint on every rank (rank 0 writes it): all ranks reduce.
        if self.world_size > 1 and "state_dict" in checkpoint:
            checkpoint["state_dict"]["item_clicks"] = self.total_item_clicks()
        if self.world_size > 1:
            # Each rank has its own stream and replay buffer; only rank 0's would be written.
            # A resumed DDP run restores weights, optimiser and counters and starts fresh users.
            return
        state = self.resume_state()
        if self._stream is not None and self._stream.running:
            state["stream"] = self._stream.state_dict()
        checkpoint[RESUME_KEY] = state

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get(RESUME_KEY)
        if state is None or self.world_size > 1:
            return
        self.load_resume_state(state)
        self._stream_resume = state.get("stream")

    def on_train_end(self) -> None:
        # The most-popular baseline of the final evaluation (rank 0) uses every rank's clicks.
        if self.world_size > 1:
            self.item_clicks.copy_(self.total_item_clicks())
        if os.environ.get(RANK_DUMP_ENV) and self._trainer is not None:
            path = Path(self.trainer.default_root_dir) / f"rank{self.global_rank}.pt"
            torch.save({
                "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
                "local_frames": self.local_frames,
                "frames": int(self.frames),
                "world_size": self.world_size,
                "first_rollout": self._first_rollout,
            }, path)

    def log_progress(self) -> None:
        """Logs frames collected and collection speed on the steps the loggers write
        (`should_log`); call from ``training_step``."""
        if not self.should_log:
            return
        self.log("train/frames", self.frames.float(), prog_bar=True)
        if self.frames_per_s is not None:
            self.log("train/frames_per_s", self.frames_per_s)

    def train_dataloader(self) -> DataLoader:
        stream = RolloutStream(
            self._make_collector, self._count_and_batch,
            batching_state=self.batching_state, resume_batching=self.resume_batching,
        )
        if self._stream_resume is not None:
            saved_on = torch.device(self._stream_resume["collector"].get("device", "cpu")).type
            if saved_on == self.device.type:
                stream.load_state_dict(self._stream_resume)
            else:
                # A CPU and a GPU generator draw different numbers from different states: the
                # simulation cannot go on where it stopped. The rest of the state can (as a
                # resumed DDP run does it).
                self.resumed_with_fresh_users = (
                    f"the checkpoint's simulation ran on {saved_on}, this run simulates on "
                    f"{self.device.type}: resumed with fresh users (weights, optimiser, counters "
                    "and replay buffer restored), so the run goes on, but not exactly as the "
                    f"saved one would have; resume on {saved_on} for an exact continuation"
                )
                rank_zero_warn(self.resumed_with_fresh_users)
            self._stream_resume = None
        self._stream = stream
        return rollout_dataloader(stream)
