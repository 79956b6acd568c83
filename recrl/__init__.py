"""recrl: reinforcement-learning recommenders on TorchRL, Lightning and Hydra."""
