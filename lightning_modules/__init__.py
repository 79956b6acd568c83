"""LightningModules of recrl: a policy module, the online RL base on it, one module per algorithm."""

from lightning_modules.dqn import DQNModule
from lightning_modules.online import OnlineRLModule
from lightning_modules.policy import PolicyModule
from lightning_modules.ppo import PPOModule
from lightning_modules.pretrain import SequencePretrainModule
from lightning_modules.replay import ReplayRLModule
from lightning_modules.slateq import SlateQModule

__all__ = ["DQNModule", "OnlineRLModule", "PolicyModule", "PPOModule", "ReplayRLModule",
           "SequencePretrainModule", "SlateQModule"]
