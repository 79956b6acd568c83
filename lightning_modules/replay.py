"""What the replay-buffer algorithms share (DQN, SlateQ): storing rollouts, replaying batches, and
their part of an exact resume."""

from __future__ import annotations

from collections.abc import Iterator

from tensordict import TensorDictBase

from lightning_modules.online import OnlineRLModule
from recrl.torchrl_state import load_replay_buffer_state, replay_buffer_state


class ReplayRLModule(OnlineRLModule):
    """An `OnlineRLModule` that learns from a replay buffer, with a target network.

    A subclass builds ``replay_buffer`` (a TorchRL ``TensorDictReplayBuffer``), ``target_updater``
    (``SoftUpdate`` / ``HardUpdate``) and ``exploration`` (with ``step(frames)``), has
    ``learning_starts`` and ``updates_per_batch`` among its hyper-parameters, and turns a rollout
    into transitions before handing them to `store_and_replay`.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._updates_left = 0  # replay updates still to come from the current rollout

    def store_and_replay(self, transitions: TensorDictBase, frames: int
                         ) -> Iterator[TensorDictBase]:
        """Adds a rollout's ``transitions`` to the buffer, anneals exploration by the rollout's
        ``frames``, then yields the rollout's ``updates_per_batch`` replay batches once the buffer
        holds ``learning_starts`` transitions.

        Exploration annealing and ``learning_starts`` count the frames of all DDP ranks together
        (each rank holds a replay buffer of its own frames; see `OnlineRLModule`).
        """
        self.replay_buffer.extend(transitions)
        world_size = self.world_size
        self.exploration.step(frames * world_size)
        if len(self.replay_buffer) * world_size < self.hparams.learning_starts:
            return
        self._updates_left = self.hparams.updates_per_batch
        yield from self._replay_batches()

    def _replay_batches(self) -> Iterator[TensorDictBase]:
        """The current rollout's replay updates; each batch is sampled when it is asked for."""
        while self._updates_left > 0:
            self._updates_left -= 1
            yield self.replay_buffer.sample()

    # -- exact resume: the replay buffer, the target-update counter, the rollout's updates left -
    def batching_state(self) -> dict:
        return {"updates_left": self._updates_left}

    def resume_batching(self, state: dict) -> Iterator[TensorDictBase]:
        self._updates_left = int(state["updates_left"])
        return self._replay_batches()

    def resume_state(self) -> dict:
        # The online and target networks and epsilon are in the state_dict (parameters and
        # buffers of the policy, the loss module and the exploration module).
        return {
            "replay_buffer": replay_buffer_state(self.replay_buffer),
            "target_updater": self.target_updater.state_dict(),
        }

    def load_resume_state(self, state: dict) -> None:
        if "replay_buffer" in state:
            load_replay_buffer_state(self.replay_buffer, state["replay_buffer"], self.device)
        if "target_updater" in state:
            self.target_updater.load_state_dict(state["target_updater"])

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        # Right after the update, before any callback's on_train_batch_end: a checkpoint written
        # at the end of this step then holds the target network of this step.
        self.target_updater.step()
