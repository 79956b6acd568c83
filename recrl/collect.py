"""The bridge from a TorchRL collector to Lightning's training loop.

Lightning pulls batches from a ``DataLoader``; TorchRL pushes rollouts from a ``Collector``.
``RolloutStream`` is an endless ``IterableDataset`` that runs the collector and turns each
rollout into training batches with a function the algorithm supplies (DQN: extend a replay buffer
and sample from it; PPO: advantages and minibatches).

Pitfalls it is shaped around (see STACK_NOTES): the DataLoader must use ``num_workers=0`` so that
the collector acts with the live policy weights, the environment is built lazily in
``__iter__`` (where the DDP rank is known), and the stream never ends on its own: training stops
at ``Trainer(max_steps=...)``, so every DDP rank yields the same number of batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector

RolloutToBatches = Callable[[TensorDictBase], Iterator[TensorDictBase]]


class RolloutStream(IterableDataset):
    """Endless stream of training batches: collect a rollout, turn it into batches, repeat."""

    def __init__(
        self, make_collector: Callable[[], Collector], rollout_to_batches: RolloutToBatches
    ) -> None:
        super().__init__()
        self.make_collector = make_collector
        self.rollout_to_batches = rollout_to_batches

    def __iter__(self) -> Iterator[TensorDictBase]:
        collector = self.make_collector()
        try:
            for rollout in collector:
                yield from self.rollout_to_batches(rollout)
        finally:
            collector.shutdown()


def _pass_through(batch: TensorDictBase) -> TensorDictBase:
    """Batches are already TensorDicts; a module-level function so it pickles."""
    return batch


def rollout_dataloader(stream: RolloutStream) -> DataLoader:
    """A DataLoader over a ``RolloutStream``: no re-batching, no worker processes."""
    return DataLoader(stream, batch_size=None, num_workers=0, collate_fn=_pass_through)
