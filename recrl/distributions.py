"""A distribution over ordered slates: Plackett-Luce over the allowed items, without repeats.

List-wise PPO's policy (``algo=ppo`` on an env with ``slate_size = k > 1``). Item ``a_1`` is drawn
from ``softmax(logits)`` over the allowed items, ``a_2`` from the same softmax without ``a_1``,
and so on, so

    log pi(a_1 .. a_k | s) = sum_j [ l(a_j) - logsumexp_{i allowed, i not in a_<j} l(i) ].

Sampling is the Gumbel top-k trick (one perturbation of the logits, the k largest: exactly the
sequential draw above, Kool et al. 2019), vectorised over users; the mode is the k best logits,
best first. ``log_prob`` loops over the k positions of a slate (never over users or items).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["PlackettLuce"]


class PlackettLuce(Distribution):
    """Ordered slates of ``slate_size`` distinct items with ``mask`` True, ``[..., k]`` int64.

    ``logits`` and ``mask`` are ``[..., N+1]``; the keyword names are those TorchRL's
    ``ProbabilisticActor`` passes (``in_keys={"logits": ..., "mask": ...}``), as for
    ``MaskedCategorical``.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, logits: Tensor, mask: Tensor, slate_size: int) -> None:
        self.logits = logits.masked_fill(~mask, float("-inf"))
        self.mask = mask
        self.slate_size = slate_size
        super().__init__(batch_shape=logits.shape[:-1], event_shape=torch.Size([slate_size]),
                         validate_args=False)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.logits.shape
            uniform = torch.rand(shape, device=self.logits.device).clamp_(1e-20, 1.0)
            keys = self.logits.expand(shape) - torch.log(-torch.log(uniform))  # Gumbel noise
            return keys.topk(self.slate_size, dim=-1).indices

    @property
    def mode(self) -> Tensor:
        return self.logits.topk(self.slate_size, dim=-1).indices

    @property
    def deterministic_sample(self) -> Tensor:
        return self.mode

    def log_prob(self, value: Tensor) -> Tensor:
        """``[..., k]`` slates -> ``[...]`` log-probabilities (the sum over positions)."""
        logits = self.logits.expand(*value.shape[:-1], self.logits.shape[-1])
        chosen = logits.gather(-1, value)  # [..., k]
        log_prob = torch.zeros(value.shape[:-1], dtype=logits.dtype, device=logits.device)
        remaining = logits
        for position in range(self.slate_size):
            log_prob = log_prob + chosen[..., position] - remaining.logsumexp(-1)
            remaining = remaining.scatter(-1, value[..., position : position + 1], float("-inf"))
        return log_prob

    def entropy(self) -> Tensor:
        """A one-sample estimate of the entropy, ``[...]``: by the chain rule the entropy is the
        expected sum over positions of each conditional softmax's entropy given the items drawn
        before it; one Gumbel draw gives those items. Exact for ``k = 1``; PPO's entropy bonus
        needs only an estimate (the exact sum runs over ``N! / (N-k)!`` slates)."""
        slate = self.sample()
        total = torch.zeros(self.batch_shape, dtype=self.logits.dtype, device=self.logits.device)
        remaining = self.logits
        for position in range(self.slate_size):
            log_p = remaining.log_softmax(-1)
            p = log_p.exp()
            total = total - (p * log_p.masked_fill(p == 0, 0.0)).sum(-1)
            remaining = remaining.scatter(-1, slate[..., position : position + 1], float("-inf"))
        return total
