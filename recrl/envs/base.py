"""Generic batched recommendation environment.

`RecEnv` owns what every simulated user shares: the window of the last ``L`` recommended
items with the user's response to each, the ``action_mask``, the specs, partial resets and
seeding. *How* a user answers a recommendation is delegated to a `UserResponseModel`, so a
data-driven user model (MovieLens, ...) plugs in without touching the history code.

All users of the batch advance together with tensor operations: there is no Python loop over
users or items in `_step` / `_reset`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from tensordict import TensorDict, TensorDictBase
from torch import Tensor
from torchrl.data import Binary, Bounded, Categorical, Composite, Unbounded
from torchrl.envs import EnvBase

from recrl.observation import CLICKED, PADDING, SHOWN

__all__ = ["MASK_SCOPES", "RecEnv", "SlateResponse", "UserResponse", "UserResponseModel"]

#: What ``mask_history`` masks: the items in the visible window, or every item of the episode.
MASK_SCOPES = ("window", "episode")


@dataclass(frozen=True)
class UserResponse:
    """What a batch of users did with one recommendation each."""

    click: Tensor  # [B] bool
    watch_time: Tensor  # [B] float32, the reward; 0 without a click
    done: Tensor  # [B] bool, the user left (terminal, not a time limit)


@dataclass(frozen=True)
class SlateResponse:
    """What a batch of users did with one slate (an ordered list of ``k`` items) each: every user
    chooses at most one item of their slate."""

    position: Tensor  # [B] int64, the slate position of the chosen item; -1: no click
    watch_time: Tensor  # [B] float32, the reward (of the chosen item); 0 without a click
    done: Tensor  # [B] bool, the user left (terminal, not a time limit)


class UserResponseModel(abc.ABC):
    """How a batch of ``num_users`` users answers recommendations from ``num_items`` items.

    The model owns every piece of hidden per-user state (interests, budget, ...). It never
    owns a random generator: the environment passes its own, so one seed fixes a whole
    trajectory whatever the model.
    """

    def __init__(self, num_users: int, num_items: int, device: torch.device | str = "cpu") -> None:
        check_param("num_users", num_users, 1)
        check_param("num_items", num_items, 1)
        self.num_users = num_users
        self.num_items = num_items
        self.device = torch.device(device)

    @abc.abstractmethod
    def reset(self, mask: Tensor, generator: torch.Generator) -> None:
        """Draw fresh users where ``mask`` ([B] bool) is True; leave the others untouched."""

    @abc.abstractmethod
    def respond(self, action: Tensor, generator: torch.Generator) -> UserResponse:
        """Show item ``action`` ([B] int64 in 1..N) to each user and update their state."""

    def respond_slate(self, slate: Tensor, generator: torch.Generator) -> SlateResponse:
        """Show the ordered ``slate`` ([B, k] int64, k distinct items per row) to each user, who
        chooses at most one of its items, and update their state.

        Only user models with a choice model over lists implement it (RecSim's proportional
        choice for synthetic users); the others recommend one item per step.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no choice model for slates: use env.slate_size=1"
        )

    @property
    def supports_slates(self) -> bool:
        """Whether `respond_slate` is implemented."""
        return type(self).respond_slate is not UserResponseModel.respond_slate

    def start_history(self, mask: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
        """The history a reset user starts with, or None for an empty one.

        Returns ``(items, responses, watch_times)``, each [B, L] (rows outside ``mask`` are
        ignored), e.g. the first items of a real user's logged history.
        """
        return None

    def item_features(self) -> Tensor | None:
        """Catalogue metadata an agent may see, [N+1, F] float32 (zeros at padding), or None.

        Static item features (a topic, text embeddings, ...) are public in a real recommender,
        unlike the users' hidden state. Models without any return None.
        """
        return None

    def item_vectors(self) -> Tensor | None:
        """A vector per item, [N+1, D] float32 (row 0 padding), whose Euclidean distances say how
        alike two items are to this simulator's users, or None.

        Diversity metrics (intra-list diversity) measure with it, so it is the simulator's own
        notion of similarity: topics for synthetic users, the taste model's item factors for
        logged data, the rating columns on Coat.
        """
        return None

    def item_categories(self) -> Tensor | None:
        """One category id per item, [N+1] int64 (0 at padding, categories from 1), or None.

        Majority-category domination (MCD: the share of recommendations that fall in the
        categories holding most of the log's interactions, `recrl.diversity`) needs it;
        catalogues without categories return None.
        """
        return None

    def expected_watch_time(self) -> Tensor:
        """Expected immediate reward of every item for every user, [B, N+1] (index 0 ignored).

        Only models whose hidden state makes this computable (synthetic users) implement it;
        it serves the myopic-oracle baseline.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose expected watch times")

    def state_dict(self) -> dict[str, Tensor]:
        """The hidden per-user state, for checkpoints (resuming a run exactly).

        The default takes every tensor attribute of the model (catalogue tensors included);
        models override it to keep only what changes while users are simulated.
        """
        return {k: v for k, v in vars(self).items() if isinstance(v, Tensor)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restores what `state_dict` returned (each tensor onto the device of the one it replaces)."""
        for key, value in state.items():
            current = getattr(self, key, None)
            if not isinstance(current, Tensor):
                raise KeyError(f"{type(self).__name__} has no tensor state {key!r}")
            setattr(self, key, value.to(current.device))


class RecEnv(EnvBase):
    """A batch of users, each receiving one recommended item (or one slate of items) per step.

    Observations (``B`` users, ``N`` items with ids ``1..N``, ``0`` = padding, window ``L``):

    - ``history`` [B, L] int64: recommended item ids, most recent last, left-padded with 0.
    - ``history_response`` [B, L] int64: 0 padding, 1 shown but not clicked, 2 clicked.
    - ``history_watch_time`` [B, L] float32: watch time of each shown item (0 without click).
    - ``action_mask`` [B, N+1] bool: False at 0 and, with ``mask_history``, at the items in
      the user's window (``mask_scope="window"``: no repeat within ``L`` steps) or at every
      item shown in the episode so far, start history included (``mask_scope="episode"``: an
      item is recommended at most once per session).
    - ``click`` [B] bool: whether the last recommendation was clicked (False after reset).

    Action ``action`` [B] int64 item id; reward [B, 1] float32 (watch time);
    ``terminated`` when the user model says the user left, ``truncated`` after
    ``max_episode_steps`` steps.

    Slates (``slate_size = k > 1``): the action is ``[B, k]`` int64, an ordered list of ``k``
    distinct allowed items; the user chooses at most one of them (the user model's
    `UserResponseModel.respond_slate`). The whole slate enters the window in its order, each item
    with its own response code, so the window holds the last ``L / k`` slates, and ``click``
    says whether any item was chosen. Candidates (``num_candidates = C > 0``, RecSim's candidate
    mode): at every reset and step, ``C`` items are drawn uniformly without replacement among
    the items the history mask allows, and ``action_mask`` allows only them (``C = 0``: the
    whole catalogue).

    Actions are not validated per step (that would force a device sync on GPU): sampling a
    masked item (or 0) is the caller's error.

    Hidden state lives in attributes, not in the tensordict. State tensors are never modified
    in place: every step and reset binds new tensors, so tensors already handed out in a
    tensordict are never changed by a later step. Build the env on its final device; ``.to``
    does not move the user model.
    """

    def __init__(
        self,
        users: UserResponseModel,
        *,
        history_length: int = 20,
        mask_history: bool = True,
        mask_scope: str = "window",
        max_episode_steps: int = 1000,
        slate_size: int = 1,
        num_candidates: int = 0,
        seed: int | None = None,
    ) -> None:
        check_param("history_length", history_length, 1)
        check_param("max_episode_steps", max_episode_steps, 1)
        if mask_scope not in MASK_SCOPES:
            raise ValueError(f"mask_scope must be one of {MASK_SCOPES}, got {mask_scope!r}")
        if mask_history and mask_scope == "episode" and (
            users.num_items <= history_length + max_episode_steps
        ):
            raise ValueError(
                f"num_items must be > history_length + max_episode_steps when mask_scope=episode "
                f"(otherwise a long episode can mask every item), got num_items={users.num_items}, "
                f"history_length={history_length}, max_episode_steps={max_episode_steps}"
            )
        if mask_history and users.num_items <= history_length:
            raise ValueError(
                f"num_items must be > history_length when mask_history=True (otherwise a full "
                f"window can mask every item), got num_items={users.num_items}, "
                f"history_length={history_length}; add items, shorten the history or set "
                f"mask_history=False"
            )
        check_slate(users, slate_size, num_candidates, history_length, mask_history)
        super().__init__(device=users.device, batch_size=torch.Size([users.num_users]))
        self.users = users
        self.num_items = users.num_items
        self.history_length = history_length
        self.mask_history = mask_history
        self.mask_scope = mask_scope
        self.max_episode_steps = max_episode_steps
        self.slate_size = slate_size
        self.num_candidates = num_candidates
        self.rng = torch.Generator(device=self.device)
        self._make_specs()

        B, L, N = users.num_users, history_length, users.num_items
        dev = self.device
        # Mask of a user with an empty history: every item but the padding id.
        self._fresh_mask = torch.ones(N + 1, dtype=torch.bool, device=dev)  # [N+1]
        self._fresh_mask[0] = False
        # State before the first reset: empty histories.
        self._history = torch.zeros(B, L, dtype=torch.int64, device=dev)
        self._history_response = torch.zeros(B, L, dtype=torch.int64, device=dev)
        self._history_watch_time = torch.zeros(B, L, dtype=torch.float32, device=dev)
        self._action_mask = self._fresh_mask.expand(B, N + 1).clone()  # [B, N+1]
        self._click = torch.zeros(B, dtype=torch.bool, device=dev)
        self._step_count = torch.zeros(B, dtype=torch.int64, device=dev)
        # Candidate mode: the items on offer this step (every item otherwise).
        self._candidate_mask = self._fresh_mask.expand(B, N + 1).clone()  # [B, N+1]
        self.set_seed(seed)

    @property
    def has_expected_reward(self) -> bool:
        """Whether `expected_immediate_reward` works: the user model exposes its hidden state."""
        return type(self.users).expected_watch_time is not UserResponseModel.expected_watch_time

    @property
    def item_features(self) -> Tensor | None:
        """Public catalogue metadata, [N+1, F] float32, or None (see `UserResponseModel`)."""
        return self.users.item_features()

    @property
    def item_vectors(self) -> Tensor | None:
        """Item vectors for similarity-based metrics, [N+1, D], or None (see `UserResponseModel`)."""
        return self.users.item_vectors()

    @property
    def item_categories(self) -> Tensor | None:
        """One category id per item, [N+1] int64, or None (see `UserResponseModel`)."""
        return self.users.item_categories()

    def _make_specs(self) -> None:
        B, L, N = self.batch_size[0], self.history_length, self.num_items
        kw = {"device": self.device}
        self.observation_spec = Composite(
            history=Bounded(0, N, shape=(B, L), dtype=torch.int64, **kw),
            history_response=Bounded(PADDING, CLICKED, shape=(B, L), dtype=torch.int64, **kw),
            history_watch_time=Unbounded(shape=(B, L), dtype=torch.float32, **kw),
            action_mask=Binary(n=N + 1, shape=(B, N + 1), dtype=torch.bool, **kw),
            click=Categorical(n=2, shape=(B,), dtype=torch.bool, **kw),
            shape=(B,),
            **kw,
        )
        action_shape = (B,) if self.slate_size == 1 else (B, self.slate_size)
        self.action_spec = Categorical(n=N + 1, shape=action_shape, dtype=torch.int64, **kw)
        self.reward_spec = Unbounded(shape=(B, 1), dtype=torch.float32, **kw)
        done = Categorical(n=2, shape=(B, 1), dtype=torch.bool, **kw)
        self.done_spec = Composite(
            done=done, terminated=done.clone(), truncated=done.clone(), shape=(B,), **kw
        )

    # ------------------------------------------------------------------ TorchRL hooks
    def _set_seed(self, seed: int | None) -> None:
        if seed is None:
            self.rng.seed()
        else:
            self.rng.manual_seed(seed)

    def _reset(self, tensordict: TensorDictBase | None = None, **kwargs) -> TensorDictBase:
        B = self.batch_size[0]
        reset = None if tensordict is None else tensordict.get("_reset", None)
        if reset is None:
            reset = torch.ones(B, dtype=torch.bool, device=self.device)
        reset = reset.reshape(B)  # [B], accepts [B, 1]
        self.users.reset(reset, self.rng)

        keep = ~reset[:, None]  # [B, 1]
        if self.mask_history:
            self._action_mask = self._clear_mask(reset)
        self._history = self._history.where(keep, 0)
        self._history_response = self._history_response.where(keep, PADDING)
        self._history_watch_time = self._history_watch_time.where(keep, 0.0)
        self._click = self._click & ~reset
        self._step_count = self._step_count.where(~reset, 0)
        start = self.users.start_history(reset)
        if start is not None:
            items, responses, watch_times = (t[:, -self.history_length :] for t in start)
            self._history = items.where(reset[:, None], self._history)
            self._history_response = responses.where(reset[:, None], self._history_response)
            self._history_watch_time = watch_times.where(reset[:, None], self._history_watch_time)
            if self.mask_history:
                mask = self._action_mask.clone()
                mask.scatter_(1, self._history.where(reset[:, None], 0), False)
                mask[:, 0] = False
                self._action_mask = mask.where(reset[:, None], self._action_mask)
        if self.num_candidates:
            self._candidate_mask = self._draw_candidates(reset)

        # Users not reset are not done either: TorchRL only resets done users and merges
        # this output into the previous one under the `_reset` mask.
        not_done = torch.zeros(B, 1, dtype=torch.bool, device=self.device)
        return self._observation(done=not_done, terminated=not_done, truncated=not_done)

    def _step(self, tensordict: TensorDictBase) -> TensorDictBase:
        action = tensordict.get("action")  # [B], or [B, k] for slates
        if self.slate_size == 1:
            response = self.users.respond(action, self.rng)
            shown = action[:, None]  # [B, 1]
            code = torch.where(response.click, CLICKED, SHOWN)[:, None]  # [B, 1]
            watch = response.watch_time[:, None]  # [B, 1]
            click, reward, done = response.click, response.watch_time, response.done
        else:
            response = self.users.respond_slate(action, self.rng)
            shown = action  # [B, k]
            chosen = torch.arange(self.slate_size, device=self.device) == response.position[:, None]
            code = torch.where(chosen, CLICKED, SHOWN)  # [B, k]
            watch = torch.where(chosen, response.watch_time[:, None], 0.0)  # [B, k]
            click, reward, done = response.position >= 0, response.watch_time, response.done

        k = shown.shape[1]
        dropped = self._history[:, :k]  # [B, k], items leaving the window
        self._history = torch.cat([self._history[:, k:], shown], dim=1)
        self._history_response = torch.cat([self._history_response[:, k:], code], dim=1)
        self._history_watch_time = torch.cat([self._history_watch_time[:, k:], watch], dim=1)
        if self.mask_history:
            self._action_mask = self._shift_mask(dropped, shown)
        if self.num_candidates:
            self._candidate_mask = self._draw_candidates()
        self._click = click
        self._step_count = self._step_count + 1

        terminated = done[:, None]  # [B, 1]
        truncated = (self._step_count >= self.max_episode_steps)[:, None]  # [B, 1]
        out = self._observation(
            done=terminated | truncated, terminated=terminated, truncated=truncated
        )
        out.set("reward", reward[:, None])
        return out

    # ------------------------------------------------------------------ helpers
    def _shift_mask(self, dropped: Tensor, shown: Tensor) -> Tensor:
        """The mask after one window shift by ``k`` items (``self._history`` already shifted).

        ``dropped`` [B, k] left the window (0 when the window was not full) and become valid
        again unless another copy is still in the window; ``shown`` [B, k] become invalid.
        Two [B, k]-sized scatters instead of a rebuild from the history; the copy is the only
        [B, N+1] work, and it is needed: earlier steps of a rollout keep their own mask.
        With ``mask_scope="episode"`` nothing is re-enabled before the user's next reset.
        """
        mask = self._action_mask.clone()  # [B, N+1]; the previous one may be in a rollout
        if self.mask_scope == "episode":
            mask.scatter_(1, shown, False)
            return mask
        still_shown = (self._history[:, :, None] == dropped[:, None, :]).any(dim=1)  # [B, k]
        reenable = (dropped != 0) & ~still_shown  # [B, k]; id 0 stays masked
        # Copies of one item among ``dropped`` get the same value, so the scatter is well defined.
        mask.scatter_(1, dropped, mask.gather(1, dropped) | reenable)
        mask.scatter_(1, shown, False)
        return mask

    def _draw_candidates(self, reset: Tensor | None = None) -> Tensor:
        """``num_candidates`` items per user drawn uniformly without replacement among those the
        history mask allows, as a [B, N+1] mask; with ``reset`` [B], only those users draw anew
        (the others keep their candidates). Every user draws, so the random stream does not
        depend on who resets."""
        B, N = self.batch_size[0], self.num_items
        keys = torch.rand(B, N + 1, generator=self.rng, device=self.device)  # [B, N+1]
        keys = keys.masked_fill(~self._action_mask, -1.0)  # not allowed: never among the top C
        drawn = keys.topk(self.num_candidates, dim=1).indices  # [B, C]
        candidates = torch.zeros(B, N + 1, dtype=torch.bool, device=self.device)
        candidates.scatter_(1, drawn, True)
        if reset is None:
            return candidates
        return torch.where(reset[:, None], candidates, self._candidate_mask)

    def _clear_mask(self, reset: Tensor) -> Tensor:
        """The mask with the window items of the ``reset`` [B] users valid again.

        Only window items (and the padding id) are masked, so a [B, L] scatter restores the
        mask of an empty history; the kept users' rows are copied unchanged. With
        ``mask_scope="episode"`` older items are masked too: reset rows are rebuilt whole.
        """
        if self.mask_scope == "episode":
            return torch.where(reset[:, None], self._fresh_mask, self._action_mask)
        shown = self._history.where(reset[:, None], 0)  # [B, L]; 0 for users kept
        mask = self._action_mask.clone()  # [B, N+1]
        mask.scatter_(1, shown, True)
        mask[:, 0] = False
        return mask

    def _observation(self, **done_flags: Tensor) -> TensorDict:
        return TensorDict(
            {
                "history": self._history,
                "history_response": self._history_response,
                "history_watch_time": self._history_watch_time,
                "action_mask": self._allowed(),
                "click": self._click,
                **done_flags,
            },
            batch_size=self.batch_size,
            device=self.device,
        )

    def _allowed(self) -> Tensor:
        """What may be recommended now, [B, N+1]: the history mask, and the candidates if any."""
        if self.num_candidates:
            return self._action_mask & self._candidate_mask
        return self._action_mask

    # ------------------------------------------------------------------ checkpoints
    #: The tensors of `RecEnv`'s own state (the user model keeps the rest).
    _STATE_TENSORS = ("_history", "_history_response", "_history_watch_time", "_action_mask",
                      "_click", "_step_count", "_candidate_mask")

    def simulation_state(self) -> dict:
        """Everything a resumed run needs to go on simulating these users exactly: the histories,
        masks and step counts, the random generator's state and the user model's hidden state
        (plain tensors and dicts, loadable with ``torch.load(weights_only=True)``).

        Not ``state_dict``: that name belongs to ``nn.Module`` (an env is one) and TorchRL's
        collectors read it for transforms.
        """
        return {
            **{name.lstrip("_"): getattr(self, name) for name in self._STATE_TENSORS},
            "rng": self.rng.get_state(),
            "users": self.users.state_dict(),
        }

    def load_simulation_state(self, state: dict) -> None:
        """Restores `simulation_state` into an env built with the same settings."""
        for name in self._STATE_TENSORS:
            if name == "_candidate_mask" and name.lstrip("_") not in state:
                continue  # saved before candidate mode existed: every item was on offer
            value = state[name.lstrip("_")]
            if value.shape != getattr(self, name).shape:
                raise ValueError(
                    f"saved {name.lstrip('_')} has shape {tuple(value.shape)}, this env "
                    f"{tuple(getattr(self, name).shape)}: build the env with the same settings"
                )
            setattr(self, name, value.to(self.device))
        self.rng.set_state(state["rng"])
        self.users.load_state_dict(state["users"])

    def expected_immediate_reward(self) -> Tensor:
        """Expected watch time of recommending each item now, [B, N+1]; -inf where masked.

        A myopic oracle takes the argmax. Requires a user model that implements
        `UserResponseModel.expected_watch_time`.
        """
        return self.users.expected_watch_time().masked_fill(~self._allowed(), float("-inf"))


def check_slate(users: UserResponseModel, slate_size: int, num_candidates: int,
                history_length: int, mask_history: bool) -> None:
    """One clear error for a slate setting the env cannot honour."""
    if not (isinstance(slate_size, int) and slate_size >= 1):
        raise ValueError(f"env.slate_size must be an integer >= 1 (items per recommendation), "
                         f"got {slate_size!r}")
    if not (isinstance(num_candidates, int) and num_candidates >= 0):
        raise ValueError(f"env.num_candidates must be an integer >= 0 (0: the whole catalogue), "
                         f"got {num_candidates!r}")
    if slate_size > 1 and not users.supports_slates:
        raise ValueError(
            f"env.slate_size={slate_size}: {type(users).__name__} has no choice model for "
            f"slates; use env.slate_size=1 with this env"
        )
    if slate_size > history_length:
        raise ValueError(f"env.slate_size={slate_size} is larger than env.history_length="
                         f"{history_length}: the window must hold at least one whole slate")
    if num_candidates and slate_size > num_candidates:
        raise ValueError(f"env.slate_size={slate_size} is larger than env.num_candidates="
                         f"{num_candidates}: a slate is chosen among the candidates; lower the "
                         f"slate size or raise the candidates")
    offered = users.num_items - (history_length if mask_history else 0)
    needed = max(slate_size, num_candidates)
    if needed > offered:
        raise ValueError(
            f"env.slate_size={slate_size} / env.num_candidates={num_candidates} need {needed} "
            f"allowed items, but {users.num_items} items minus a masked window of "
            f"{history_length if mask_history else 0} leave {offered}; add items or shorten "
            f"the history"
        )


def check_param(name: str, value: float, low: float, *, strict: bool = False) -> None:
    """Raise a ValueError naming ``name`` unless ``value >= low`` (``> low`` if ``strict``)."""
    ok = value > low if strict else value >= low  # both False for NaN
    if not ok:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
