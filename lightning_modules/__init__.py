"""LightningModules of recrl: one per algorithm, sharing ``RecommenderModule``."""

from lightning_modules.base import RecommenderModule
from lightning_modules.dqn import DQNModule

__all__ = ["DQNModule", "RecommenderModule"]
