"""hardware=auto, the default (recrl/hardware.py): the machine's GPUs decide the accelerator, and
several devices mean DDP; the named presets are left as they are.

The resolver takes the GPU count as an argument, so every machine's answer is checked here on
any machine. One real CLI run (two CPU processes) checks the path end to end; its GPU
counterpart is in tests/test_gpu.py.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy
from omegaconf import DictConfig, OmegaConf

import recrl.hardware
from recrl.checks import ConfigurationError, check_hardware
from recrl.hardware import apply_hardware, cpu_processes_notice, ddp_strategy, resolve_hardware
from tests.conftest import (
    CONF_DIR, SHORT_SESSIONS, compose_config, read_results, recrl_command, run_process,
    run_recrl_in_process, subprocess_env,
)

#: The keys a hardware preset sets.
HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision")
#: The presets that pin a choice.
NAMED_PRESETS = ("cpu", "gpu", "ddp", "ddp_cpu")

no_gpu_here = pytest.mark.skipif(
    torch.cuda.is_available(), reason="on a machine with a GPU, hardware=auto trains on it "
    "(tests/test_gpu.py checks that)")


def hardware(trainer_cfg: DictConfig) -> dict[str, Any]:
    """The hardware keys of a trainer config, as plain values (Lightning's default
    ``num_nodes=1`` where the config leaves it out)."""
    values = OmegaConf.to_container(trainer_cfg, resolve=False)
    return {"num_nodes": 1, **{key: values[key] for key in HARDWARE_KEYS if key in values}}


def auto_trainer(*overrides: str, gpus: int) -> DictConfig:
    """The default config's trainer with ``overrides``, resolved for ``gpus`` GPUs."""
    return resolve_hardware(compose_config(*overrides).trainer, gpus=gpus)


def lightning_trainer(trainer_cfg: DictConfig, root: Path) -> L.Trainer:
    """A Lightning Trainer of these hardware keys only (nothing is launched before ``fit``)."""
    return instantiate(hardware(trainer_cfg), _target_="lightning.pytorch.Trainer", logger=False,
                       enable_checkpointing=False, default_root_dir=str(root))


# -- the resolver --------------------------------------------------------------------------------
def test_auto_is_the_default(tmp_path: Path) -> None:
    cfg = compose_config(run_dir=tmp_path)
    assert cfg.hydra.runtime.choices.hardware == "auto"
    assert cfg.trainer.accelerator == "auto"


def test_one_device_without_a_gpu_is_exactly_the_cpu_preset(tmp_path: Path) -> None:
    # The numbers of a default run must not change: the same trainer as hardware=cpu.
    auto = auto_trainer(gpus=0)
    cpu = compose_config("hardware=cpu").trainer
    assert hardware(auto) == hardware(cpu)
    assert OmegaConf.to_container(auto) == {**OmegaConf.to_container(cpu), "num_nodes": 1}
    built = lightning_trainer(auto, tmp_path)
    assert isinstance(built.strategy, SingleDeviceStrategy)
    assert built.strategy.root_device == torch.device("cpu") and built.world_size == 1


def test_several_devices_without_a_gpu_are_cpu_processes_with_ddp_over_gloo(
        tmp_path: Path) -> None:
    requested = compose_config("trainer.devices=2").trainer
    trainer = resolve_hardware(requested, gpus=0)
    assert (requested.accelerator, requested.strategy) == ("auto", "auto")  # pure: a new config
    assert hardware(trainer) == {
        "accelerator": "cpu", "devices": 2, "num_nodes": 1, "precision": "32-true",
        "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy",
                     "process_group_backend": "gloo", "find_unused_parameters": True}}
    built = lightning_trainer(trainer, tmp_path)  # instantiated, not launched
    assert isinstance(built.strategy, DDPStrategy)
    assert built.strategy.process_group_backend == "gloo"
    assert built.num_devices == 2 and built.strategy.root_device.type == "cpu"
    check_hardware(trainer)  # the check that refuses devices=2 under hardware=cpu lets it pass


def test_all_gpus_are_ddp_over_nccl_on_each_of_them() -> None:
    assert hardware(auto_trainer("trainer.devices=-1", gpus=4)) == {
        "accelerator": "gpu", "devices": 4, "num_nodes": 1, "precision": "32-true",
        "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy",
                     "process_group_backend": "nccl", "find_unused_parameters": True}}


@pytest.mark.parametrize(("overrides", "gpus", "expected"), [
    ([], 1, {"accelerator": "gpu", "devices": 1, "strategy": "auto"}),  # one GPU, no DDP
    (["trainer.devices=2"], 4, {"accelerator": "gpu", "devices": 2}),
    (["trainer.devices=[0,2]"], 4, {"accelerator": "gpu", "devices": [0, 2]}),  # GPU indices
    (["trainer.num_nodes=2"], 0, {"accelerator": "cpu", "devices": 1, "num_nodes": 2}),
])
def test_each_machine_gets_its_device_and_ddp_only_with_several_processes(
        overrides: list[str], gpus: int, expected: dict[str, Any]) -> None:
    resolved = hardware(auto_trainer(*overrides, gpus=gpus))
    assert {key: resolved[key] for key in expected} == expected
    several = expected.get("strategy") != "auto"
    assert (resolved["strategy"] == ddp_strategy(expected["accelerator"])) == several


def test_a_strategy_given_on_the_command_line_is_kept() -> None:
    trainer = auto_trainer("trainer.devices=2", "trainer.strategy=ddp_spawn", gpus=0)
    assert (trainer.accelerator, trainer.strategy) == ("cpu", "ddp_spawn")


def test_all_gpus_without_a_gpu_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError) as error:
        auto_trainer("trainer.devices=-1", gpus=0)
    message = str(error.value)
    assert "\n" not in message
    assert "-1 means all GPUs" in message and "none" in message
    assert "trainer.devices=N for N CPU processes" in message


def test_more_gpus_than_the_machine_has_is_one_clear_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = auto_trainer("trainer.devices=4", gpus=2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigurationError, match=r"more GPUs than this machine has \(2\); "
                                                 r"use trainer.devices=2 or fewer"):
        check_hardware(trainer)


@pytest.mark.parametrize("preset", NAMED_PRESETS)
@pytest.mark.parametrize("gpus", [0, 4])
def test_a_named_preset_is_left_as_it_is(preset: str, gpus: int) -> None:
    trainer = compose_config(f"hardware={preset}", "trainer.devices=3").trainer
    assert hardware(resolve_hardware(trainer, gpus=gpus)) == hardware(trainer)


def test_one_cpu_process_pinned_with_several_devices_still_needs_ddp() -> None:
    trainer = resolve_hardware(compose_config("hardware=cpu", "trainer.devices=4").trainer, 0)
    with pytest.raises(ConfigurationError, match="needs DDP; use hardware=auto .* "
                                                 "or hardware=ddp_cpu with trainer.devices=4"):
        check_hardware(trainer)


def test_the_ddp_strategy_is_the_ddp_presets_own() -> None:
    """The strategy auto builds is the one conf/hardware/ddp*.yaml configure (kept in step)."""
    for preset, accelerator in (("ddp_cpu", "cpu"), ("ddp", "gpu")):
        preset_strategy = OmegaConf.to_container(
            OmegaConf.load(CONF_DIR / "hardware" / f"{preset}.yaml").trainer.strategy)
        built = ddp_strategy(accelerator)
        assert {k: v for k, v in built.items() if k != "process_group_backend"} == {
            k: v for k, v in preset_strategy.items() if k != "process_group_backend"}
        assert preset_strategy.get("process_group_backend", "nccl") == built["process_group_backend"]


# -- the notice ----------------------------------------------------------------------------------
NOTICE = "no GPU visible: trainer.devices=2 runs as 2 CPU processes (DDP over gloo)"


@pytest.mark.parametrize(("overrides", "gpus", "notice"), [
    (["trainer.devices=2"], 0, NOTICE),
    (["trainer.devices=4", "trainer.num_nodes=3"], 0,
     "no GPU visible: trainer.devices=4 runs as 4 CPU processes on each of 3 machines "
     "(DDP over gloo)"),
    ([], 0, None),  # one process: nothing to say
    (["trainer.devices=2"], 2, None),  # GPUs, as asked
    (["hardware=ddp_cpu"], 0, None),  # CPU processes, as asked
])
def test_the_notice_says_when_devices_became_cpu_processes(
        overrides: list[str], gpus: int, notice: str | None) -> None:
    requested = compose_config(*overrides).trainer
    assert cpu_processes_notice(requested, resolve_hardware(requested, gpus)) == notice


@pytest.mark.parametrize(("rank", "lines"), [(0, [NOTICE]), (1, [])])
def test_apply_hardware_resolves_the_run_config_and_only_rank_0_says_so(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, rank: int,
        lines: list[str]) -> None:
    cfg = compose_config("trainer.devices=2")
    monkeypatch.setattr(recrl.hardware, "visible_gpus", lambda: 0)
    monkeypatch.setattr(recrl.hardware.rank_zero_only, "rank", rank)
    with caplog.at_level(logging.INFO, logger="recrl"):
        apply_hardware(cfg)
    assert [r.getMessage() for r in caplog.records if r.name == "recrl.hardware"] == lines
    # What the run builds, checks and records (W&B's config) is the resolved trainer.
    assert cfg.trainer.accelerator == "cpu"
    assert cfg.trainer.strategy.process_group_backend == "gloo"
    assert OmegaConf.to_container(cfg.trainer)["default_root_dir"] == "${paths.output_dir}"


# -- through the CLI -----------------------------------------------------------------------------
@no_gpu_here
def test_all_gpus_on_a_machine_without_one_ends_with_one_line(tmp_path: Path) -> None:
    message = run_recrl_in_process(tmp_path / "run", "debug=smoke", "trainer.devices=-1")
    assert message is not None and message.startswith("recrl: configuration error:"), message
    assert "means all GPUs" in message and "\n" not in message
    assert (tmp_path / "run" / "FAILED").is_file()


@pytest.mark.slow
@pytest.mark.e2e
@no_gpu_here
def test_several_devices_run_as_cpu_processes_as_written(tmp_path: Path) -> None:
    """`trainer.devices=2` and nothing else about hardware: two processes (Lightning re-runs the
    command line for the second, so a real subprocess), one notice, one run folder and result,
    and the machine's cores split between the processes."""
    run_dir = tmp_path / "run"
    env = subprocess_env()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # Lightning's split applies when unset
        env.pop(name, None)
    proc = run_process(recrl_command(f"hydra.run.dir={run_dir}", "debug=smoke", SHORT_SESSIONS,
                                     "algo=ppo", "trainer.devices=2"), env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count(NOTICE) == 1  # rank 0 only
    assert NOTICE in (run_dir / "run.log").read_text()
    assert sorted(p.name for p in run_dir.glob("run*.log")) == ["run.log", "run.rank1.log"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert len(list(tmp_path.rglob("results.json"))) == 1
    results = read_results(run_dir)
    assert results["optimizer_steps"] == 20
    machine = results["machine"]
    assert (machine["device"], machine["processes"], machine["ddp_backend"]) == ("cpu", 2, "gloo")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert machine["cpu_threads"] == max(1, cores // 2)


# -- compile switch ------------------------------------------------------------------------------
def test_compile_switch_compiles_the_encoder_in_place_and_keeps_its_checkpoint_keys() -> None:
    from recrl.build import build_module

    plain, _ = build_module(compose_config("debug=smoke"))
    compiled, _ = build_module(compose_config("debug=smoke", "compile.enabled=true",
                                              "compile.mode=reduce-overhead"))
    assert plain.encoder._compiled_call_impl is None  # off by default
    assert compiled.encoder._compiled_call_impl is not None
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # no "_orig_mod." prefix


def test_an_unknown_compile_mode_is_one_clear_error(tmp_path: Path) -> None:
    error = run_recrl_in_process(tmp_path / "run", "debug=smoke", "compile.enabled=true",
                                 "compile.mode=fastest")
    assert error is not None and "compile.mode='fastest'" in error and "reduce-overhead" in error
    assert not (tmp_path / "run" / "results.json").exists()
