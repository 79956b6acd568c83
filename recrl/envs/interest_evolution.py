"""RecSim's interest-evolution user model (Ie et al. 2019), vectorised over users.

Each item belongs to one of ``K`` topic clusters and has a quality; cluster mean qualities
run from -3 (clickbait-like: the user spends budget and gets little back) to +3. A user has
hidden interests ``x`` in [-1, 1]^K and a time budget. Recommending item ``i`` of cluster
``c``:

- click with probability ``w / (w + no_click_weight)``, ``w = x[c] + 1`` (RecSim's
  proportional choice model with a no-click option);
- on a click: reward ``t = min(budget, item_length)``, ``budget += -t + quality_gain * t * q_i``,
  and ``x[c]`` moves by ``interest_step * (1 - |x_c|) * (1 - x_c)``, up with probability
  ``(x_c + 1) / 2`` else down, clipped to [-1, 1];
- without a click: reward 0 and ``budget -= no_click_cost``.

The user leaves (terminated) when the budget reaches 0. Under a uniformly random policy
this reproduces RecSim's numbers (return 137.5, episode length 116.8).

Slates (``slate_size = k``): RecSim's multinomial proportional choice model. The user picks
item ``j`` of the slate with probability ``w_j / (sum_i w_i + no_click_weight)`` and nothing
with probability ``no_click_weight / (sum_i w_i + no_click_weight)``; the chosen item then acts
as a clicked single recommendation does, and a slate without a click costs ``no_click_cost``.
A slate of one is the single-item model, draw for draw.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recrl.envs.base import RecEnv, SlateResponse, UserResponse, UserResponseModel, check_param

__all__ = ["InterestEvolutionEnv", "InterestEvolutionUsers", "cluster_quality_means"]


def cluster_quality_means(num_topics: int) -> Tensor:
    """Mean item quality of each cluster, [K] float32.

    RecSim uses ``linspace(-3, 0, 14)`` then ``linspace(0, 3, 6)`` for its 20 clusters: 70%
    of the clusters are low quality. Other ``K`` keep that split: ``round(0.7 K)`` clusters on
    [-3, 0] and the rest on [0, 3].
    """
    num_low = round(0.7 * num_topics)
    return torch.cat(
        [
            torch.linspace(-3.0, 0.0, num_low, dtype=torch.float32),
            torch.linspace(0.0, 3.0, num_topics - num_low, dtype=torch.float32),
        ]
    )


class InterestEvolutionUsers(UserResponseModel):
    """Interest-evolution users and their item catalogue.

    The catalogue is drawn from its own ``catalogue_seed`` (on CPU, then moved) so that
    environments with different user seeds, or on different devices, share the same items.

    State, all on ``device``: ``interest`` [B, K], ``budget`` [B]; catalogue
    ``item_cluster`` [N+1] int64 and ``item_quality`` [N+1] float32, index 0 (padding) = 0.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int = 500,
        *,
        num_topics: int = 20,
        catalogue_seed: int = 0,
        time_budget: float = 200.0,
        item_length: float = 4.0,
        quality_sd: float = 0.1,
        no_click_weight: float = 2.0,
        no_click_cost: float = 0.5,
        quality_gain: float = 0.9 / 3.4,
        interest_step: float = 0.3,
        observe_topics: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        super().__init__(num_users, num_items, device)
        check_param("num_topics", num_topics, 1)
        check_param("time_budget", time_budget, 0.0, strict=True)
        check_param("item_length", item_length, 0.0, strict=True)
        check_param("quality_sd", quality_sd, 0.0)
        # A zero weight would make a user with x_c = -1 click with probability 0/0.
        check_param("no_click_weight", no_click_weight, 0.0, strict=True)
        check_param("no_click_cost", no_click_cost, 0.0)
        check_param("interest_step", interest_step, 0.0)
        if not abs(quality_gain) < float("inf"):
            raise ValueError(f"quality_gain must be a finite number, got {quality_gain}")
        self.num_topics = num_topics
        self.time_budget = time_budget
        self.item_length = item_length
        self.no_click_weight = no_click_weight
        self.no_click_cost = no_click_cost
        self.quality_gain = quality_gain
        self.interest_step = interest_step
        self.observe_topics = observe_topics

        gen = torch.Generator().manual_seed(catalogue_seed)
        cluster = torch.randint(0, num_topics, (num_items,), generator=gen)  # [N]
        noise = torch.randn(num_items, generator=gen, dtype=torch.float32)  # [N]
        quality = cluster_quality_means(num_topics)[cluster] + quality_sd * noise  # [N]
        pad = torch.zeros(1, dtype=torch.float32)
        self.item_cluster = torch.cat([pad.long(), cluster]).to(self.device)  # [N+1]
        self.item_quality = torch.cat([pad, quality]).to(self.device)  # [N+1]

        # Until the first reset: neutral users with a full budget.
        f32 = {"dtype": torch.float32, "device": self.device}
        self.interest = torch.zeros(num_users, num_topics, **f32)  # [B, K]
        self.budget = torch.full((num_users,), time_budget, **f32)  # [B]

    def reset(self, mask: Tensor, generator: torch.Generator) -> None:
        # Draw for every user, keep the draws of the masked ones: the random stream then
        # does not depend on which users reset.
        shape = (self.num_users, self.num_topics)
        fresh = torch.rand(shape, generator=generator, dtype=torch.float32, device=self.device)
        fresh = fresh * 2 - 1  # [B, K], U(-1, 1)
        self.interest = torch.where(mask[:, None], fresh, self.interest)
        self.budget = self.budget.where(~mask, self.time_budget)

    def respond(self, action: Tensor, generator: torch.Generator) -> UserResponse:
        cluster = self.item_cluster[action][:, None]  # [B, 1]
        x_c = self.interest.gather(1, cluster).squeeze(1)  # [B]
        u = torch.rand(
            self.num_users, 2, generator=generator, dtype=torch.float32, device=self.device
        )  # [B, 2]: click draw, interest-direction draw

        click = u[:, 0] < self._click_probability(x_c)  # [B]
        return self._consume(action, cluster, x_c, click, u[:, 1])

    def respond_slate(self, slate: Tensor, generator: torch.Generator) -> SlateResponse:
        k = slate.shape[1]
        clusters = self.item_cluster[slate]  # [B, k]
        interest = self.interest.gather(1, clusters)  # [B, k]
        weight = interest + 1  # w = x_c + 1
        total = weight.sum(dim=1, keepdim=True) + self.no_click_weight  # [B, 1]
        u = torch.rand(
            self.num_users, 2, generator=generator, dtype=torch.float32, device=self.device
        )  # [B, 2]: choice draw, interest-direction draw
        # The chosen position is the first whose cumulative choice probability exceeds the draw;
        # k when the draw falls in the no-click mass.
        position = (u[:, :1] >= (weight / total).cumsum(dim=1)).sum(dim=1)  # [B] in 0..k
        click = position < k
        index = position.clamp(max=k - 1)[:, None]  # [B, 1]
        response = self._consume(slate.gather(1, index).squeeze(1), clusters.gather(1, index),
                                 interest.gather(1, index).squeeze(1), click, u[:, 1])
        return SlateResponse(position=torch.where(click, position, -1),
                             watch_time=response.watch_time, done=response.done)

    def _consume(self, item: Tensor, cluster: Tensor, x_c: Tensor, click: Tensor,
                 direction_draw: Tensor) -> UserResponse:
        """The user watches ``item`` ([B]; its topic ``cluster`` [B, 1], the user's interest in
        it ``x_c`` [B]) where ``click`` ([B] bool): watch time, budget and that interest move as
        the module docstring says; elsewhere the budget pays the no-click cost."""
        # min(budget, length); the floor at 0 only matters if a finished user is stepped on.
        watch = torch.where(click, self.budget.clamp(0.0, self.item_length), 0.0)  # [B]
        gain = self.quality_gain * watch * self.item_quality[item]
        self.budget = torch.where(
            click, self.budget - watch + gain, self.budget - self.no_click_cost
        )

        step = self.interest_step * (1 - x_c.abs()) * (1 - x_c)  # [B]
        up = direction_draw < (x_c + 1) / 2
        moved = (x_c + torch.where(up, step, -step)).clamp(-1.0, 1.0)
        new_x_c = torch.where(click, moved, x_c)
        self.interest = self.interest.scatter(1, cluster, new_x_c[:, None])
        return UserResponse(click=click, watch_time=watch, done=self.budget <= 0)

    def item_features(self) -> Tensor | None:
        """One-hot topic of each item, [N+1, K] (zeros at padding), if ``observe_topics``.

        RecSim's interest-evolution documents expose exactly this (their topic) to the agent;
        quality stays hidden and must be learnt from the users' responses.
        """
        if not self.observe_topics:
            return None
        features = torch.nn.functional.one_hot(self.item_cluster, self.num_topics).float()
        features[0] = 0.0
        return features

    def item_vectors(self) -> Tensor:
        """One-hot topic of each item, [N+1, K] (zeros at padding), whether or not the agent
        observes topics: to these users two items differ only by their topic (quality aside),
        so two items of one topic are at distance 0 and of two topics at sqrt(2)."""
        vectors = torch.nn.functional.one_hot(self.item_cluster, self.num_topics).float()
        vectors[0] = 0.0
        return vectors

    def item_categories(self) -> Tensor:
        """Topic cluster + 1 of each item, [N+1] int64 (0 at padding)."""
        categories = self.item_cluster + 1
        categories[0] = 0
        return categories

    def expected_watch_time(self) -> Tensor:
        p = self._click_probability(self.interest[:, self.item_cluster])  # [B, N+1]
        return p * self.budget.clamp(0.0, self.item_length)[:, None]

    def _click_probability(self, x: Tensor) -> Tensor:
        w = x + 1
        return w / (w + self.no_click_weight)

    def state_dict(self) -> dict[str, Tensor]:
        """Hidden per-user state (the catalogue is rebuilt from ``catalogue_seed``)."""
        return {"interest": self.interest, "budget": self.budget}


class InterestEvolutionEnv(RecEnv):
    """`RecEnv` over `InterestEvolutionUsers`; ``batch_size = [num_users]``.

    Users are drawn from the env's generator (``seed`` / `set_seed`), the catalogue from
    ``catalogue_seed``: a training and an evaluation env with different seeds share items.
    See the module docstring for the model and the parameters.
    """

    users: InterestEvolutionUsers

    def __init__(
        self,
        num_users: int,
        *,
        seed: int | None = None,
        device: torch.device | str = "cpu",
        num_items: int = 500,
        history_length: int = 20,
        catalogue_seed: int = 0,
        num_topics: int = 20,
        time_budget: float = 200.0,
        item_length: float = 4.0,
        quality_sd: float = 0.1,
        no_click_weight: float = 2.0,
        no_click_cost: float = 0.5,
        quality_gain: float = 0.9 / 3.4,
        interest_step: float = 0.3,
        max_episode_steps: int = 1000,
        mask_history: bool = True,
        observe_topics: bool = True,
        slate_size: int = 1,
        num_candidates: int = 0,
        user_split: str = "train",
    ) -> None:
        # Synthetic users are fresh draws of the generator: training, validation and test users
        # differ by seed, so the split name is only checked, for the same interface as logged data.
        if user_split not in ("train", "validation", "test"):
            raise ValueError(
                f"user_split must be 'train', 'validation' or 'test', got {user_split!r}")
        users = InterestEvolutionUsers(
            num_users,
            num_items,
            num_topics=num_topics,
            catalogue_seed=catalogue_seed,
            time_budget=time_budget,
            item_length=item_length,
            quality_sd=quality_sd,
            no_click_weight=no_click_weight,
            no_click_cost=no_click_cost,
            quality_gain=quality_gain,
            interest_step=interest_step,
            observe_topics=observe_topics,
            device=device,
        )
        super().__init__(
            users,
            history_length=history_length,
            mask_history=mask_history,
            max_episode_steps=max_episode_steps,
            slate_size=slate_size,
            num_candidates=num_candidates,
            seed=seed,
        )

    # Hidden state, for oracles and tests (the agent only sees the tensordict).
    @property
    def interest(self) -> Tensor:
        """[B, K] float32 user interests."""
        return self.users.interest

    @property
    def budget(self) -> Tensor:
        """[B] float32 remaining time budgets."""
        return self.users.budget

    @property
    def item_cluster(self) -> Tensor:
        """[N+1] int64 cluster of each item (0 at the padding id)."""
        return self.users.item_cluster

    @property
    def item_quality(self) -> Tensor:
        """[N+1] float32 quality of each item (0 at the padding id)."""
        return self.users.item_quality
