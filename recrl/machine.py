"""What a run ran on, for results.json.

The same seed gives the same numbers only on the same kind of machine with the same thread
count: another CPU's math libraries round differently and training amplifies it (on ML-100K a
10,000-step pretraining ranked the test item 0.212 on one machine and 0.2025 on another). With
the machine in every results.json, numbers from different machines are told apart at a glance.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name") and ":" in line:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def describe_machine(device_type: str = "cpu", processes: int = 1,
                     backend: str | None = None) -> dict[str, str | int]:
    """CPU model, torch's CPU threads (of each process), the device the run trained on
    (``"cpu"`` or ``"cuda"``, with the GPU's name), its processes (DDP: ``processes`` > 1, with
    the process group's ``backend``) and library versions: hardware=auto chooses these at run
    time, so the run says what it chose."""
    import lightning
    import torchrl
    import transformers

    machine: dict[str, str | int] = {
        "cpu": cpu_model(),
        "cpu_threads": torch.get_num_threads(),
        "device": device_type,
        "processes": processes,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "lightning": lightning.__version__,
        "transformers": transformers.__version__,
    }
    if processes > 1 and backend:
        machine["ddp_backend"] = backend
    if device_type == "cuda" and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(torch.cuda.current_device())
    return machine
