"""recrl.machine: the CPU model a run records beside its numbers."""

from __future__ import annotations

from pathlib import Path

import torch

from recrl.machine import cpu_model, describe_machine


def test_cpu_model_reads_the_model_name_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                       "model name\t: AMD EPYC 9654 96-Core Processor\nflags\t\t: fpu sse\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert cpu_model(cpuinfo) == "AMD EPYC 9654 96-Core Processor"


def test_cpu_model_without_cpuinfo_falls_back_to_platform(tmp_path: Path) -> None:
    name = cpu_model(tmp_path / "absent")
    assert isinstance(name, str) and name and "model name" not in name
    no_model_line = tmp_path / "cpuinfo"
    no_model_line.write_text("processor\t: 0\nHardware\t: BCM2835\n")  # some ARM kernels
    assert cpu_model(no_model_line) == name


def test_describe_machine_on_the_cpu() -> None:
    machine = describe_machine("cpu")
    assert machine["cpu_threads"] == torch.get_num_threads()
    assert machine["torch"] == torch.__version__
    assert "gpu" not in machine
    assert {"cpu", "python", "torchrl", "lightning", "transformers"} <= machine.keys()
