"""The bridge from a TorchRL collector to Lightning's training loop.

Lightning pulls batches from a ``DataLoader``; TorchRL pushes rollouts from a ``Collector``.
``RolloutStream`` is an endless ``IterableDataset`` that runs the collector and turns each
rollout into training batches with a function the algorithm supplies (DQN: extend a replay buffer
and sample from it; PPO: advantages and minibatches).

Pitfalls it is shaped around:

- the DataLoader uses ``num_workers=0``: a worker process would hold its own copy of the policy,
  taken when the worker started, and collect with those weights ever after; in the training
  process the collector acts with the weights the optimiser has just updated;
- the environment is built lazily, in ``__iter__``: only there, in the process Lightning trains
  in, is the DDP rank known (each rank simulates its own users, seeded with its rank);
- the stream never ends on its own: training stops at ``Trainer(max_steps=...)``, so every DDP
  rank yields the same number of batches (a rank whose data ran out first would leave the
  others waiting in the gradient all-reduce).

Exact resume (docs/resuming.md): ``state_dict()`` snapshots the stream between two batches (the
simulator, the collector's next observation, the batches already yielded that the training loop
has not trained on yet (Lightning fetches one batch ahead), the global RNG and the algorithm's
position inside the current rollout); a stream given that snapshot with ``load_state_dict()``
continues exactly where the saved one stood, even though Lightning starts a new iterator.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from tensordict import TensorDictBase
from torch.utils.data import DataLoader, IterableDataset
from torchrl.collectors import Collector

from recrl.torchrl_state import (
    collector_state, restore_collector, restore_rng, rng_state, td_from_state, td_to_state,
)

RolloutToBatches = Callable[[TensorDictBase], Iterator[TensorDictBase]]

#: Batches yielded but not yet trained on that a snapshot can hold (Lightning prefetches one).
MAX_PENDING = 4


class RolloutStream(IterableDataset):
    """Endless stream of training batches: collect a rollout, turn it into batches, repeat.

    For exact resume the algorithm may also give ``batching_state()`` (where it stands inside
    the current rollout's batches, as plain data) and ``resume_batching(state)`` (yields the rest
    of that rollout's batches). The training loop reports each batch it takes with
    ``mark_consumed()``, so that a snapshot knows which yielded batches are still pending.
    """

    def __init__(
        self,
        make_collector: Callable[[], Collector],
        rollout_to_batches: RolloutToBatches,
        *,
        batching_state: Callable[[], Any] | None = None,
        resume_batching: Callable[[Any], Iterator[TensorDictBase]] | None = None,
    ) -> None:
        super().__init__()
        self.make_collector = make_collector
        self.rollout_to_batches = rollout_to_batches
        self.batching_state = batching_state
        self.resume_batching = resume_batching
        self._collector: Collector | None = None
        self._recent: deque[TensorDictBase] = deque(maxlen=MAX_PENDING)
        self._yielded = 0
        self._consumed = 0
        self._resume: dict[str, Any] | None = None

    # -- snapshots ----------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """Whether an iterator is live (a snapshot describes where it stands)."""
        return self._collector is not None

    def mark_consumed(self) -> None:
        """The training loop took one more batch of this stream."""
        self._consumed += 1

    def state_dict(self) -> dict[str, Any]:
        """Where the live iterator stands, between two batches (plain data only)."""
        if self._collector is None:
            raise RuntimeError("RolloutStream.state_dict() needs a running iterator")
        num_pending = self._yielded - self._consumed
        if not 0 <= num_pending <= len(self._recent):
            raise RuntimeError(
                f"cannot snapshot the rollout stream: {num_pending} batches fetched ahead of "
                f"training (at most {MAX_PENDING} are kept)"
            )
        pending = list(self._recent)[len(self._recent) - num_pending:]
        return {
            "pending": [td_to_state(batch) for batch in pending],
            "rng": rng_state(),
            "collector": collector_state(self._collector),
            "batching": self.batching_state() if self.batching_state is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next iterator continues from ``state`` instead of starting fresh."""
        self._resume = state

    # -- iteration ------------------------------------------------------------------------------
    def _emit(self, batch: TensorDictBase) -> TensorDictBase:
        self._recent.append(batch)
        self._yielded += 1
        return batch

    def __iter__(self) -> Iterator[TensorDictBase]:
        collector = self.make_collector()
        resume, self._resume = self._resume, None
        self._collector = collector
        self._recent.clear()
        self._yielded = self._consumed = 0
        try:
            if resume is not None:
                restore_collector(collector, resume["collector"])
                for saved in resume["pending"]:
                    yield self._emit(td_from_state(saved))
                # The generators are restored where the saved stream would have gone on: the
                # training steps in between drew from them in the saved run before the snapshot.
                restore_rng(resume["rng"])
                if resume["batching"] is not None and self.resume_batching is not None:
                    for batch in self.resume_batching(resume["batching"]):
                        yield self._emit(batch)
            for rollout in collector:
                for batch in self.rollout_to_batches(rollout):
                    yield self._emit(batch)
        finally:
            self._collector = None
            collector.shutdown()


def _pass_through(batch: TensorDictBase) -> TensorDictBase:
    """Batches are already TensorDicts; a module-level function so it pickles."""
    return batch


def rollout_dataloader(stream: RolloutStream) -> DataLoader:
    """A DataLoader over a ``RolloutStream``: no re-batching, no worker processes."""
    return DataLoader(stream, batch_size=None, num_workers=0, collate_fn=_pass_through)
