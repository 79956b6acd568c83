"""Self-supervised pretraining of the history encoder on logged sequences (``algo=pretrain``).

Two objectives (``algo.objective``), on windows of the length the RL agent will see. ``cloze``
(the default) is BERT4Rec's task (Sun et al. 2019):

    draw a window of L consecutive logged items of a training user, and the item that follows it
    replace each item of the window by a learnt [MASK] token with probability mask_prob
    loss = CE(next item | state)  +  cloze_weight * CE(masked items | their positions)
           + rating_weight * (rating head(state, next item) - its logged rating)^2

``causal`` is SASRec's (Kang & McAuley 2018) with a full-softmax cross-entropy, which Klenitskiy
& Vasilev (RecSys 2023) found better than BERT4Rec's cloze and faster to train. It needs the
encoder's causal attention (``encoder.causal=true``); nothing is masked, and every position of
the window predicts the item after it (the last one, the user's state, the item after the
window): L targets per window instead of one and a few masked ones.

    loss = mean over window positions i of CE(item i+1 | items <= i)  +  rating_weight * (...)^2

Every prediction scores the whole catalogue through `ItemScorer` heads tied to the encoder's
item table. The next-item head reads the user's state (`HistoryEncoderBase.state_position`), exactly
as the RL policies do, so an RL run started from this checkpoint (``encoder.init_from=...``)
begins with a policy that already recommends plausible next items. The rating head (logs with
ratings only) is the reward's own signal in the log: how much the user liked the item that came
next, predicted from the window. It has the scorer's form too, so ``encoder.init_scorer=rating``
starts the policy from a myopic estimate of the simulator's reward (its taste model is fitted on
the same ratings) instead of a next-item predictor. BERT4Rec's own test-time trick (a [MASK]
appended after the history) is the state token here (cloze): it is always present and always
predicts what comes next.

Data: the leave-one-out training part of every *training* user of the simulator's user split
(the last two items of each user are validation and test targets; held-out simulator users are
never trained on). ``train_on_validation_item`` adds the validation item, as BERT4Rec's own data
preparation does. Windows are cut and masked with tensor operations on the CSR sequences.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_modules.policy import EnvFactory, PolicyModule
from recrl.callbacks import EveryNSteps, RankingValidation
from recrl.data import Sequences, window_positions
from recrl.encoders import HistoryEncoderBase, ItemScorer
from recrl.observation import CLICKED, MAX_RATING, PADDING
from recrl.results import FinishedRun, RunResults, pretraining_results

log = logging.getLogger(__name__)

class TrainingWindows:
    """Every (window, next item) pair of the training sequences, cut on demand in batches.

    A sample is a target position ``t`` (never a user's first item): the window is the up to
    ``L`` items before it, left-padded with 0, most recent last, as the environments write
    histories; the target is the item at ``t``.
    """

    def __init__(self, sequences: Sequences, history_length: int,
                 train_on_validation_item: bool = False) -> None:
        held_out = 1 if train_on_validation_item else 2  # the test item, and the validation item
        train_items, train_offsets = sequences.training_sequences(held_out)
        lengths = train_offsets[1:] - train_offsets[:-1]
        users = torch.arange(sequences.num_users)
        train_users = ~sequences.heldout_users
        position_user = torch.repeat_interleave(users, lengths)  # [I_train]
        start = torch.repeat_interleave(train_offsets[:-1], lengths)
        position = torch.arange(train_items.numel())
        keep = train_users[position_user] & (position > start)  # a target with a history
        self.items = train_items
        self.targets = position[keep]  # flat positions of the targets
        self.user_start = start[keep]  # flat position of each target's user's first item
        self.watch = self._watch_times(sequences, held_out)
        self.history_length = history_length

    @staticmethod
    def _watch_times(sequences: Sequences, held_out: int) -> Tensor:
        """Logged ratings of the training part (the env's convention: MAX_RATING without any)."""
        part = sequences.training_part(held_out)
        if sequences.ratings is None:
            return torch.full((int(part.sum()),), MAX_RATING)
        return sequences.ratings[part]

    def __len__(self) -> int:
        return self.targets.numel()

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """Windows ``[B, L]`` (items, responses, watch times), next items and their logged
        ratings ``[B]``."""
        target = self.targets[index]  # [B]
        source, valid = window_positions(self.user_start[index], target, self.history_length)
        history = torch.where(valid, self.items[source], PADDING)
        return {
            "history": history,
            "history_response": torch.where(valid, CLICKED, PADDING),
            "history_watch_time": torch.where(valid, self.watch[source], 0.0),
            "next_item": self.items[target],
            "next_rating": self.watch[target],
        }


#: ``algo.objective``: what the encoder is pretrained to predict (module docstring).
OBJECTIVES = ("cloze", "causal")


class SequencePretrainModule(PolicyModule):
    """Self-supervised pretraining of a `HistoryEncoderBase`, BERT4Rec's or SASRec's way (module
    docstring).

    Args:
        encoder: the encoder to pretrain (``encoder.init_from`` loads it into an RL run).
        env_factory: a logged-data environment factory; its sequences and user split are used.
        objective: ``"cloze"`` (masked items and the next item, bidirectional attention) or
            ``"causal"`` (every position predicts the item after it; the encoder must have
            ``causal=True``).
        mask_prob: probability that a window item is replaced by [MASK] (BERT4Rec: 0.2 on
            MovieLens, larger for sparse logs). Cloze only.
        cloze_weight: weight of the masked-item loss next to the next-item loss. Cloze only.
        rating_weight: weight of the rating head's squared error (the logged rating of the next
            item). Logs without ratings get no rating head, whatever the weight.
        batch_size: windows per optimiser step.
        train_on_validation_item: also train on each training user's leave-one-out validation
            item, as BERT4Rec's own data preparation does before its final fit (its
            ``gen_data_fin.py`` "puts validate into train"). The test item stays out; the
            periodic validation then ranks only the simulator's held-out users, whom
            pretraining never trains on.
        lr, weight_decay, warmup_steps: AdamW with linear warm-up then linear decay to 0 over
            ``trainer.max_steps``.
        seed: seed of the window order (the masks follow the global seed).
    """

    def __init__(
        self,
        encoder: HistoryEncoderBase,
        env_factory: EnvFactory,
        *,
        objective: str = "cloze",
        mask_prob: float = 0.2,
        cloze_weight: float = 1.0,
        rating_weight: float = 1.0,
        batch_size: int = 256,
        train_on_validation_item: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 0.01,
        warmup_steps: int = 100,
        seed: int = 0,
    ) -> None:
        # No gradient clipping: pretraining's AdamW with warm-up is stable without it.
        super().__init__(encoder, env_factory, max_grad_norm=None, seed=seed)
        if objective not in OBJECTIVES:
            raise ValueError(f"algo.objective={objective!r}: choose {' | '.join(OBJECTIVES)}")
        if objective == "causal" and not encoder.causal:
            raise ValueError(
                "algo.objective=causal trains every position to predict the item after it, which "
                "needs causal attention (bidirectional, each position would see its target): add "
                "encoder.causal=true"
            )
        if objective == "cloze" and encoder.causal:
            raise ValueError(
                "algo.objective=cloze predicts masked items from both sides, which causal "
                "attention cannot read: use algo.objective=causal with encoder.causal=true"
            )
        if not 0.0 <= mask_prob < 1.0:
            raise ValueError(f"algo.mask_prob must be in [0, 1), got {mask_prob}")
        if cloze_weight < 0:
            raise ValueError(f"algo.cloze_weight must be >= 0, got {cloze_weight}")
        if rating_weight < 0:
            raise ValueError(f"algo.rating_weight must be >= 0, got {rating_weight}")
        if batch_size < 1:
            raise ValueError(f"algo.batch_size must be >= 1, got {batch_size}")
        self.save_hyperparameters(ignore=["encoder", "env_factory"])
        env = env_factory(num_users=1, seed=seed)
        sequences = getattr(env, "sequences", None)
        if sequences is None:
            raise ValueError(
                f"algo=pretrain learns from logged sequences, and {type(env).__name__} has none; "
                "use a logged-data env (env=ml100k, env=beauty or env=logged)"
            )
        if sequences.num_items != encoder.num_items:
            raise ValueError(
                f"the encoder has {encoder.num_items} items, the log {sequences.num_items}"
            )
        self.sequences: Sequences = sequences
        self.train_on_validation_item = train_on_validation_item
        self.windows = TrainingWindows(sequences, encoder.history_length,
                                       train_on_validation_item)
        self.objective = objective
        self.next_item_head = ItemScorer(encoder)
        # Cloze only: a causal run creates neither (DDP refuses parameters that get no gradient).
        # (Built in the order of earlier versions, so a seed draws the same initial weights.)
        self.cloze_head = ItemScorer(encoder) if objective == "cloze" else None
        self.rating_head: ItemScorer | None = None
        if rating_weight > 0 and sequences.ratings is not None:
            self.rating_head = ItemScorer(encoder)
        elif rating_weight > 0:
            log.warning("this log has no ratings: no rating head is trained "
                        "(algo.rating_weight=%s has no effect)", rating_weight)
        self.mask_token = (nn.Parameter(torch.randn(encoder.hidden_size) * 0.02)
                           if objective == "cloze" else None)
        self.mask_prob = mask_prob
        self.cloze_weight = cloze_weight
        self.rating_weight = rating_weight
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_steps = warmup_steps

    # -- what evaluation and ranking read ----------------------------------------------------
    def item_scores(self, history: Tensor, response: Tensor, watch_time: Tensor) -> Tensor:
        """Scores ``[B, N+1]`` of every item as the next one after each history."""
        return self.next_item_head(self.encoder(history, response, watch_time))

    def make_validation(self, evaluation: DictConfig, sequences: Sequences | None
                        ) -> EveryNSteps:
        """Full-ranking HR@10 of the validation items of ``evaluation.num_users`` users."""
        return RankingValidation(
            sequences, every_n_steps=evaluation.every_n_steps, num_users=evaluation.num_users,
            seed=evaluation.val_seed, heldout_only=self.train_on_validation_item,
            keep_best=evaluation.select == "best",
        )

    def final_results(self, run: FinishedRun) -> RunResults | None:
        """Rankings of the test items (no policy is played: pretraining learns no actions)."""
        return pretraining_results(self, run)

    # -- training -----------------------------------------------------------------------------
    def losses(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """The objective's cross-entropies (and the rating head's squared error) of one batch
        of windows."""
        history = batch["history"]
        tokens = self.encoder.embed_tokens(
            history, batch["history_response"], batch["history_watch_time"]
        )  # [B, L, H]
        if self.objective == "causal":
            hidden, losses = self._causal_losses(tokens, history, batch["next_item"])
        else:
            hidden, losses = self._cloze_losses(tokens, history, batch["next_item"])
        if self.rating_head is not None:
            state = hidden[:, self.encoder.state_position]  # [B, H]
            predicted = self.rating_head.score_items(state, batch["next_item"])  # [B]
            losses["rating"] = F.mse_loss(predicted, batch["next_rating"])
            losses["loss"] = losses["loss"] + self.rating_weight * losses["rating"]
        return losses

    def _cloze_losses(self, tokens: Tensor, history: Tensor, next_item: Tensor
                      ) -> tuple[Tensor, dict[str, Tensor]]:
        """BERT4Rec: mask some window items, predict them and (from the state token) the item
        after the window. Returns the BERT outputs ``[B, L+1, H]`` and the losses."""
        masked = (torch.rand(history.shape, device=history.device) < self.mask_prob) & (
            history != PADDING
        )  # [B, L]
        tokens = torch.where(masked[..., None], self.mask_token, tokens)
        hidden = self.encoder.contextualise(tokens, history)  # [B, L+1, H]
        next_loss = F.cross_entropy(self.next_item_head(hidden[:, 0]), next_item)
        if masked.any():
            cloze_logits = self.cloze_head(hidden[:, 1:][masked])  # [M, N+1]: masked only
            cloze_loss = F.cross_entropy(cloze_logits, history[masked])
        else:
            cloze_loss = next_loss.new_zeros(())
        losses = {"next_item": next_loss, "cloze": cloze_loss,
                  "loss": next_loss + self.cloze_weight * cloze_loss}
        return hidden, losses

    def _causal_losses(self, tokens: Tensor, history: Tensor, next_item: Tensor
                       ) -> tuple[Tensor, dict[str, Tensor]]:
        """SASRec: the mean CE of every window item's output (the state token's, first,
        excluded) against the item after it: the next window item, and for the last one the
        item after the window. Padding positions predict nothing. Returns the BERT outputs
        ``[B, L+1, H]`` and the losses."""
        hidden = self.encoder.contextualise(tokens, history)  # [B, L+1, H]
        targets = torch.cat([history[:, 1:], next_item[:, None]], dim=1)  # [B, L]
        real = history != PADDING  # left padding: a real item is followed by a real target
        next_loss = F.cross_entropy(self.next_item_head(hidden[:, 1:][real]), targets[real])
        return hidden, {"next_item": next_loss, "loss": next_loss}

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.losses(batch)
        # Checked for NaN / inf before the step is applied, as every algorithm's (NonFiniteGuard).
        for name, value in losses.items():
            self.log_loss(f"train/{name}_loss" if name != "loss" else "train/loss", value)
        return losses["loss"]

    def train_dataloader(self) -> DataLoader:
        # Indices are shuffled with a seeded generator; each batch of them is cut into windows
        # with tensor operations (collate), not one sample at a time.
        return DataLoader(
            range(len(self.windows)),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(self.seed),
            collate_fn=lambda index: self.windows.batch(torch.tensor(index)),
        )

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr,
                                      weight_decay=self.weight_decay)
        total = max(self.trainer.max_steps, 1)
        warmup = min(self.warmup_steps, total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(total - warmup, 1))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
