"""Batched recommendation environments: `RecEnv` plus swappable user models."""

from recrl.envs.base import RecEnv, UserResponse, UserResponseModel
from recrl.envs.coat import CoatEnv, RatingMatrixEnv, RatingMatrixUsers
from recrl.envs.interest_evolution import InterestEvolutionEnv, InterestEvolutionUsers
from recrl.envs.logged import LoggedEnv, LoggedUsers
from recrl.envs.ml1m_easyrl import ML1MEasyRLEnv

# Not a simulator's (recrl/observation.py); exported here too because tests and bench/ drive the
# simulators with it.
from recrl.observation import uniform_valid_action

__all__ = [
    "CoatEnv",
    "RatingMatrixEnv",
    "RatingMatrixUsers",
    "InterestEvolutionEnv",
    "InterestEvolutionUsers",
    "LoggedEnv",
    "LoggedUsers",
    "ML1MEasyRLEnv",
    "RecEnv",
    "UserResponse",
    "UserResponseModel",
    "uniform_valid_action",
]
