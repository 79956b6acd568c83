"""LightningModules of recrl: one per algorithm, sharing ``RecommenderModule``."""

from lightning_modules.base import RecommenderModule
from lightning_modules.dqn import DQNModule
from lightning_modules.ppo import PPOModule

__all__ = ["DQNModule", "PPOModule", "RecommenderModule"]
