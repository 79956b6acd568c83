"""Batched recommendation environments: `RecEnv` plus swappable user models."""

from recrl.envs.base import RecEnv, UserResponse, UserResponseModel, uniform_valid_action
from recrl.envs.interest_evolution import InterestEvolutionEnv, InterestEvolutionUsers

__all__ = [
    "InterestEvolutionEnv",
    "InterestEvolutionUsers",
    "RecEnv",
    "UserResponse",
    "UserResponseModel",
    "uniform_valid_action",
]
