"""Builds a run from its composed config: environment factory, encoder, algorithm module, its
validation, callbacks, loggers and the Lightning trainer.

Everything comes from ``_target_`` entries through ``hydra.utils.instantiate``: a new algorithm,
encoder, environment or callback is a new yaml (and its module), never a branch here. Importing
this module has no side effects: the benchmarks build their modules with `build_module`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
from hydra.errors import InstantiationException
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from recrl.callbacks import EveryNSteps
from recrl.checkpoint_io import AtomicCheckpointIO
from recrl.checks import (
    ConfigurationError, check_config, check_ranking, check_slate_support, configuration_message,
)
from recrl.data import Sequences
from recrl.encoders.text import TEXT_OPTIONS, encoder_item_features
from recrl.hardware import apply_hardware
from recrl.tracking import make_loggers, tracking_callbacks

#: Keys of ``conf/algo/*.yaml`` that configure the run rather than the module's constructor.
RUN_KEYS = ("optimized_metric",)


class Built(NamedTuple):
    """What a run is made of."""

    module: Any  # a lightning_modules.policy.PolicyModule
    trainer: L.Trainer
    validation: EveryNSteps  # the module's own validation callback
    sequences: Sequences | None  # the log behind a logged-data env, else None


def with_default_env(overrides: Sequence[str], default_env: str = "ml100k") -> list[str]:
    """``overrides`` with ``env=<default_env>`` in front unless one of them chooses the env.

    For scripts whose runs are on logged data (bench/): ``--override encoder=bert_text`` alone
    must not fall back to the synthetic env, and Hydra refuses a group given twice."""
    chooses_env = any(o.lstrip("+~").split("=", 1)[0] == "env" for o in overrides)
    return list(overrides) if chooses_env else [f"env={default_env}", *overrides]


def algo_choice(module_class: type) -> str:
    """``algo=<name>`` as the run chose it (Hydra's choice), else the module's class name."""
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices.get("algo", module_class.__name__)
    return module_class.__name__


def build_module(cfg: DictConfig) -> tuple[Any, Any]:
    """The algorithm module of ``cfg`` (env factory -> encoder -> algo), and the one-user env
    built on the way (it rejects invalid env values at once)."""
    env_factory = instantiate(cfg.env, _partial_=True)
    probe_env = env_factory(num_users=1, seed=cfg.seed)
    # The text_* keys (encoder=bert_text) choose the item features, not the encoder's shape.
    encoder_cfg = OmegaConf.to_container(cfg.encoder, resolve=True)
    text_options = {k: encoder_cfg.pop(k) for k in TEXT_OPTIONS if k in encoder_cfg}
    encoder = instantiate(
        encoder_cfg,
        num_items=probe_env.num_items,
        history_length=probe_env.history_length,
        item_features=encoder_item_features(probe_env, **text_options),
    )
    algo_cfg = OmegaConf.to_container(cfg.algo, resolve=True)
    for key in RUN_KEYS:
        algo_cfg.pop(key, None)
    module_class = get_class(algo_cfg["_target_"])
    check_slate_support(getattr(module_class, "slate_support", "item"),
                        getattr(probe_env, "slate_size", 1), algo_choice(module_class))
    module = instantiate(algo_cfg, encoder=encoder, env_factory=env_factory, seed=cfg.seed)
    compile_encoder(module.encoder, cfg.get("compile"))
    return module, probe_env


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_encoder(encoder: Any, compile_cfg: DictConfig | None) -> None:
    """``compile.enabled``: the encoder's calls go through ``torch.compile`` (in place, so its
    state dict, checkpoints and DDP wrapping are unchanged); compilation happens at the first
    call of each input shape."""
    if compile_cfg is None or not compile_cfg.enabled:
        return
    if compile_cfg.mode not in COMPILE_MODES:
        raise ValueError(f"compile.mode={compile_cfg.mode!r}: choose one of "
                         f"{', '.join(COMPILE_MODES)}")
    encoder.compile(mode=compile_cfg.mode)


def make_callbacks(cfg: DictConfig, validation: EveryNSteps, loggers: list[Any]) -> list[Any]:
    """``cfg.callbacks`` (conf/callbacks/), the module's validation and the trackers' own.

    The progress bar is left out with ``trainer.enable_progress_bar=false`` (logs, sweeps).
    Lightning runs checkpoint callbacks after the others at the end of a step, so a checkpoint
    of step k holds step k's validation point."""
    show_bar = cfg.trainer.get("enable_progress_bar", True)
    configured = [instantiate(node) for name, node in cfg.callbacks.items()
                  if node is not None and (show_bar or name != "progress_bar")]
    return [*configured, validation, *tracking_callbacks(cfg, loggers)]


def build(cfg: DictConfig, output_dir: Path) -> Built:
    """Instantiates everything from the config; any rejected value becomes a ConfigurationError.

    ``hardware=auto`` is resolved in ``cfg`` first: what is checked, built and recorded is the
    accelerator, devices and strategy the run uses."""
    try:
        apply_hardware(cfg)
        check_config(cfg)
        module, probe_env = build_module(cfg)
        sequences = getattr(probe_env, "sequences", None)  # logged-data envs only
        check_ranking(sequences, cfg.evaluation.ranking)
        validation = module.make_validation(cfg.evaluation, sequences)
        loggers = make_loggers(cfg)
        callbacks = make_callbacks(cfg, validation, loggers)
        # Every checkpoint is written beside its target and renamed over it (never half-written).
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers,
                              plugins=[AtomicCheckpointIO()])
    except (ValueError, TypeError, FileNotFoundError, InstantiationException) as err:
        raise ConfigurationError(configuration_message(err)) from err
    return Built(module, trainer, validation, sequences)
