"""Batched recommendation environments: `RecEnv` plus swappable user models."""

from recrl.envs.base import RecEnv, UserResponse, UserResponseModel, uniform_valid_action
from recrl.envs.interest_evolution import InterestEvolutionEnv, InterestEvolutionUsers
from recrl.envs.logged import LoggedEnv, LoggedUsers

__all__ = [
    "InterestEvolutionEnv",
    "InterestEvolutionUsers",
    "LoggedEnv",
    "LoggedUsers",
    "RecEnv",
    "UserResponse",
    "UserResponseModel",
    "uniform_valid_action",
]
