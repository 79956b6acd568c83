"""``hardware=auto`` (the default): the trainer's accelerator, devices and strategy decided from
the machine, so that ``python -m recrl.run algo=ppo trainer.devices=4`` runs as written
anywhere: DDP over NCCL on four GPUs, or four CPU processes with DDP over gloo where no GPU is
visible.

``resolve_hardware`` is pure (the GPU count is given, not probed) so that every machine's
answer is unit-tested on any machine; ``recrl.build`` calls it before the config is checked or
anything is built, and the run records (W&B, results.json) the resolved values. The named
presets (hardware=cpu, gpu, ddp, ddp_cpu) set an explicit accelerator and are left as they are.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from recrl.checks import ConfigurationError

log = logging.getLogger(__name__)

#: ``trainer.accelerator`` of conf/hardware/auto.yaml: "decide from the machine".
AUTO = "auto"
#: The strategy of several processes, as conf/hardware/ddp.yaml and ddp_cpu.yaml spell it.
DDP_TARGET = "lightning.pytorch.strategies.DDPStrategy"
#: The process-group backend of each accelerator: NCCL between GPUs, gloo between CPU processes.
BACKENDS = {"gpu": "nccl", "cpu": "gloo"}


def visible_gpus() -> int:
    """CUDA GPUs PyTorch can use here (0 without CUDA, or with ``CUDA_VISIBLE_DEVICES=``)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def ddp_strategy(accelerator: str) -> dict[str, Any]:
    """The DDP strategy the ddp presets configure, with the accelerator's backend.

    ``find_unused_parameters``: some parameters (BERT's unused pooler) get no gradient in a
    step; without it DDP stops at the second step."""
    return {"_target_": DDP_TARGET, "process_group_backend": BACKENDS[accelerator],
            "find_unused_parameters": True}


def process_count(devices: Any) -> int | None:
    """``trainer.devices`` as a number of processes on this machine (``-1``: all GPUs; a list:
    those GPU indices); None for anything else, left for ``check_hardware`` to refuse."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices
    if isinstance(devices, str) and devices.lstrip("-").isdigit():
        return int(devices)
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return len(devices)
    return None


def resolve_hardware(trainer_cfg: DictConfig, gpus: int) -> DictConfig:
    """``trainer_cfg`` with ``accelerator=auto`` made concrete for a machine with ``gpus`` GPUs.

    GPU when there is one, else CPU; ``devices=N>1`` (or several machines) means DDP, NCCL on
    GPUs and gloo between CPU processes; ``devices=-1`` means every GPU (an error without any).
    ``devices=1`` stays one process with Lightning's single-device strategy, exactly what
    hardware=cpu / gpu run. A config whose accelerator is not ``auto`` comes back unchanged.
    """
    if str(trainer_cfg.get("accelerator")) != AUTO:
        return trainer_cfg
    resolved = trainer_cfg.copy()
    accelerator = "gpu" if gpus > 0 else "cpu"
    devices = trainer_cfg.get("devices", 1)
    processes = process_count(devices)
    if processes == -1:
        if accelerator == "cpu":
            raise ConfigurationError(
                "trainer.devices=-1 means all GPUs, and this machine has none visible to "
                "PyTorch; use trainer.devices=N for N CPU processes"
            )
        processes = devices = gpus
    resolved.accelerator = accelerator
    resolved.devices = devices
    several = (processes is not None and processes > 1) or trainer_cfg.get("num_nodes", 1) != 1
    if several and str(trainer_cfg.get("strategy", AUTO)) == AUTO:
        resolved.strategy = ddp_strategy(accelerator)
    return resolved


def cpu_processes_notice(requested: DictConfig, resolved: DictConfig) -> str | None:
    """The line that says ``hardware=auto`` turned several devices into CPU processes (a user
    who asked for 4 devices may have expected GPUs); None for anything else."""
    processes = process_count(resolved.get("devices"))
    if str(requested.get("accelerator")) != AUTO or resolved.accelerator != "cpu" or (
            processes is None or processes < 2):
        return None
    nodes = resolved.get("num_nodes", 1)
    where = f" on each of {nodes} machines" if nodes != 1 else ""
    return (f"no GPU visible: trainer.devices={processes} runs as {processes} CPU processes"
            f"{where} (DDP over gloo)")


def apply_hardware(cfg: DictConfig) -> None:
    """Resolves ``cfg.trainer`` in place, so that what the run checks, builds and records (W&B's
    config, results.json) is the resolved hardware, and says so on rank 0 when several devices
    became CPU processes.

    The processes share the machine's cores: Lightning's launcher gives each of them
    ``cores // trainer.devices`` torch threads (at least 1) unless ``OMP_NUM_THREADS`` is set."""
    requested = cfg.trainer
    cfg.trainer = resolve_hardware(requested, visible_gpus())
    notice = cpu_processes_notice(requested, cfg.trainer)
    if notice is not None and rank_zero_only.rank == 0:
        log.info(notice)
