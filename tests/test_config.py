"""Every config under conf/ composes and resolves, found by globbing (a new yaml is covered the
day it is added); no training.

Each file of each group is chosen on top of the root config (``conf/config.yaml``) with the
companions it needs (a data config needs a logged-data env, a search needs its algorithm), as
``python -m recrl.run <group>=<file>`` would compose it, and then every value is resolved: the
task's config and the ``hydra`` node, ``${oc.env:...}`` and ``${now:...}`` interpolations, Hydra's
``${hydra:...}`` (``paths.output_dir``, the log file), recrl's own resolvers. Hydra fills some
``hydra.*`` values itself only when it starts a job; the test fills the same ones:
``hydra.runtime.output_dir`` (the run folder) and, for the sweep folders, ``hydra.job.num`` /
``hydra.job.id`` (set by the launcher of a multirun). ``hydra.hydra_help.hydra_help`` is left
as Hydra leaves it (``???``, filled for ``--hydra-help`` only). Every ``_target_`` must import,
and every key beside it (two levels deep: ``algo``, ``logger.csv``) must be one of its arguments.
Nothing is instantiated: no simulator, no model, no data read.

The pair groups ``env_algo`` (``<env>_<algo>.yaml``) and ``debug_algo`` (``<debug>_<algo>.yaml``)
are never chosen by name: the root config picks one up when its env (debug preset) and algo are
chosen, and silently none when the name does not match (``optional``). So each file must name an
existing env (debug preset) and algo, and composing that pair must apply every value it holds.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

import recrl.run  # noqa: F401  registers the ${recrl_log_suffix:} resolver of conf/hydra/
from recrl.build import RUN_KEYS
from recrl.encoders.text import TEXT_OPTIONS
from tests.conftest import CONF_DIR, compose_config

#: The pair groups, and the two groups whose choices name their files ``<first>_<second>.yaml``.
PAIR_GROUPS = {"env_algo": ("env", "algo"), "debug_algo": ("debug", "algo")}
#: Values a config leaves for the user to give (``???``), and what the test gives instead:
#: ``env=logged`` reads a log of the user's own, named on the command line (docs/data.md).
USER_VALUES = {"data.path": "log.csv", "data.format": "table"}
#: Left missing by Hydra itself outside ``--hydra-help``.
HYDRA_MISSING = {"hydra.hydra_help.hydra_help"}


def groups() -> list[str]:
    return sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def yaml(group: str, option: str) -> DictConfig:
    return OmegaConf.load(CONF_DIR / group / f"{option}.yaml")


def overridden_group(group: str, option: str, overridden: str) -> str | None:
    """The choice of group ``overridden`` that ``group/option.yaml``'s defaults list makes."""
    for entry in yaml(group, option).get("defaults", []):
        if isinstance(entry, DictConfig):
            for key, value in entry.items():
                if key.removeprefix("override ").lstrip("/") == overridden:
                    return value
    return None


def companions(group: str, option: str) -> list[str]:
    """What ``<group>=<option>`` must come with to make a config that runs."""
    if group == "data":  # read by the logged-data envs only (recrl.run refuses it otherwise)
        return ["env=logged"]
    if group == "hparams_search":  # a search space names its algorithm's knobs
        algo = overridden_group(group, option, "algo")
        return [f"algo={algo}"] if algo else []
    return []


def split_pair(group: str, option: str) -> tuple[str, str]:
    """``ml100k_dqn`` of env_algo -> ("ml100k", "dqn"): the one split into an existing choice of
    each of the pair's groups."""
    first, second = PAIR_GROUPS[group]
    parts = option.split("_")
    splits = [("_".join(parts[:i]), "_".join(parts[i:])) for i in range(1, len(parts))]
    matches = [(a, b) for a, b in splits if a in options(first) and b in options(second)]
    assert len(matches) == 1, (
        f"conf/{group}/{option}.yaml must be named <{first}>_<{second}>.yaml after an existing "
        f"conf/{first}/ and conf/{second}/ file (the root config never picks it up otherwise); "
        f"{first}: {options(first)}, {second}: {options(second)}")
    return matches[0]


def choice_overrides(group: str, option: str) -> list[str]:
    if group in PAIR_GROUPS:
        first, second = PAIR_GROUPS[group]
        a, b = split_pair(group, option)
        return [f"{first}={a}", f"{second}={b}"]
    return [f"{group}={option}", *companions(group, option)]


def missing_keys(cfg: Any, prefix: str = "") -> set[str]:
    """The dotted keys of ``cfg`` whose value is ``???`` (interpolations are not followed)."""
    found = set()
    keys = cfg.keys() if isinstance(cfg, DictConfig) else range(len(cfg))
    for key in keys:
        path = f"{prefix}{key}"
        node = cfg._get_node(key)
        if OmegaConf.is_missing(cfg, key):
            found.add(path)
        elif OmegaConf.is_config(node) and not node._is_none() and not node._is_interpolation():
            found |= missing_keys(node, f"{path}.")
    return found


def compose_and_resolve(run_dir: Path, *overrides: str) -> tuple[DictConfig, dict]:
    """The config of ``overrides`` with the ``hydra`` node, and all of it resolved."""
    cfg = compose_config(*overrides, run_dir=run_dir, job_num=0)
    missing = missing_keys(cfg) - HYDRA_MISSING
    if missing:
        given = [f"{key}={USER_VALUES[key]}" for key in sorted(missing) if key in USER_VALUES]
        assert len(given) == len(missing), f"values left to the user: {sorted(missing)}"
        return compose_and_resolve(run_dir, *overrides, *given)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    return cfg, resolved


def targets(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["_target_"]] if "_target_" in node else []
        return found + [t for value in node.values() for t in targets(value)]
    if isinstance(node, list):
        return [t for value in node for t in targets(value)]
    return []


#: Keys of an instantiated node that are Hydra's, not the target's arguments.
INSTANTIATE_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
#: Keys that recrl takes out of a node before instantiating it: the encoder's text options
#: choose the item features (recrl/encoders/text.py), not the encoder's shape; the W&B table of
#: example recommendations is a callback's (recrl/tracking.py), not the logger's.
NOT_ARGUMENTS = {"encoder": set(TEXT_OPTIONS), "algo": set(RUN_KEYS),
                 "logger.wandb": {"example_users", "example_warmup_steps"}}


def unknown_arguments(resolved: dict) -> dict[str, set[str]]:
    """``{"algo": {"gama"}}``: keys of a task-config node with a ``_target_`` that its target
    does not take (a misspelt or stale knob would fail at instantiation, or never reach it)."""
    unknown = {}
    for name, node in resolved.items():
        if name == "hydra" or not isinstance(node, dict):
            continue
        nodes = [(name, node), *((f"{name}.{k}", v) for k, v in node.items()
                                 if isinstance(v, dict))]
        for path, sub in nodes:
            if "_target_" not in sub:
                continue
            parameters = inspect.signature(get_object(sub["_target_"])).parameters.values()
            if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
                continue
            keys = set(sub) - INSTANTIATE_KEYS - NOT_ARGUMENTS.get(path, set())
            extra = keys - {p.name for p in parameters}
            if extra:
                unknown[path] = extra
    return unknown


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"algo.gamma": 0.9, ...}`` of a plain container."""
    if isinstance(node, dict):
        return {k: v for key, value in node.items()
                for k, v in leaves(value, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): node}


CASES = [(group, option) for group in groups() for option in options(group)]


def test_the_cases_cover_every_group_of_the_root_config() -> None:
    """The groups found under conf/ are the root config's groups (a folder the defaults list
    never names would never be composed), and each holds at least one file."""
    named = set()
    for entry in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"))["defaults"]:
        if isinstance(entry, dict):
            (key,) = entry
            named.add(key.removeprefix("optional ").split("@")[0])
    assert set(groups()) == named
    assert {group for group, _ in CASES} == named
    assert len(CASES) >= 30  # 33 files when this test was written


@pytest.mark.parametrize(("group", "option"), CASES, ids=[f"{g}={o}" for g, o in CASES])
def test_every_config_composes_and_resolves(group: str, option: str, tmp_path: Path) -> None:
    overrides = choice_overrides(group, option)
    _, resolved = compose_and_resolve(tmp_path / "run", *overrides)
    choices = resolved["hydra"]["runtime"]["choices"]
    for override in overrides:  # each choice was taken (a companion overrode none of them)
        chosen_group, chosen = override.split("=")
        assert choices[chosen_group] == chosen, (override, choices)
    # ${hydra:runtime.output_dir} and recrl's log-file resolver reached their values.
    assert resolved["paths"]["output_dir"] == str(tmp_path / "run")
    assert resolved["hydra"]["job_logging"]["handlers"]["file"]["filename"] == str(
        tmp_path / "run" / "run.log")
    for target in targets(resolved):
        assert callable(get_object(target)), target
    assert unknown_arguments(resolved) == {}
    # The algorithm and the simulator are the ones the choices name.
    assert resolved["algo"]["_target_"] == yaml("algo", choices["algo"])["_target_"]
    env_file = yaml("env", choices["env"])
    if "_target_" in env_file:
        assert resolved["env"]["_target_"] == env_file["_target_"]
    if group == "data":  # the env reads the chosen log
        assert resolved["env"]["data"] == resolved["data"]


PAIRS = [(group, option) for group, option in CASES if group in PAIR_GROUPS]


def own_values(group: str, option: str) -> dict:
    """The leaves a group file sets, with those of the files of its group it includes first
    (``defaults: [ml100k_ppo]`` in ``env_algo/logged_ppo.yaml``)."""
    config = OmegaConf.to_container(yaml(group, option), resolve=False)
    values: dict = {}
    for included in config.pop("defaults", []):
        if isinstance(included, str) and included != "_self_":
            values.update(own_values(group, included))
    values.update(leaves(config))
    return values


@pytest.mark.parametrize(("group", "option"), PAIRS, ids=[f"{g}={o}" for g, o in PAIRS])
def test_pair_configs_name_an_existing_pair_and_apply_every_value(group: str, option: str,
                                                                  tmp_path: Path) -> None:
    """``<env>_<algo>.yaml`` (``<debug>_<algo>.yaml``) names an existing pair, and composing
    that pair applies each of the file's values, every one an argument of its target."""
    _, resolved = compose_and_resolve(tmp_path / "run", *choice_overrides(group, option))
    composed = leaves(resolved)
    own = own_values(group, option)
    assert own, f"conf/{group}/{option}.yaml sets nothing"
    for key, value in own.items():
        assert composed[key] == value, f"conf/{group}/{option}.yaml: {key}={value} not applied"
    assert unknown_arguments(resolved) == {}, f"conf/{group}/{option}.yaml"


@pytest.mark.parametrize("search", options("hparams_search"))
def test_every_search_parameter_is_a_knob_of_its_algorithm(search: str, tmp_path: Path) -> None:
    """The Optuna sweeper's search space: each key exists in the composed config (a trial would
    fail on a knob its algorithm lacks) and each range parses as Hydra's sweep grammar."""
    cfg, resolved = compose_and_resolve(tmp_path / "run", f"hparams_search={search}",
                                        *companions("hparams_search", search))
    params = resolved["hydra"]["sweeper"]["params"]
    assert params, f"conf/hparams_search/{search}.yaml searches nothing"
    parser = OverridesParser.create()
    for key, space in params.items():
        assert OmegaConf.select(cfg, key, default="<absent>") != "<absent>", key
        (override,) = parser.parse_overrides([f"{key}={space}"])
        assert override.is_sweep_override(), f"{key}: {space} is a single value, not a range"
    assert resolved["hydra"]["mode"] == RunMode.MULTIRUN  # no -m needed
    # The study is named after the algorithm it searches and the env (dqn_synthetic).
    choices = resolved["hydra"]["runtime"]["choices"]
    assert resolved["hydra"]["sweeper"]["study_name"] == f"{choices['algo']}_{choices['env']}"


def test_environment_variables_reach_the_paths_they_name(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """``${oc.env:RECRL_DATA_DIR,data}`` and friends: the variable when set, the default else."""
    for name in ("RECRL_DATA_DIR", "RECRL_CACHE_DIR", "WANDB_DIR"):
        monkeypatch.delenv(name, raising=False)
    choices = ("env=ml100k", "logger=wandb", "encoder=bert_text")
    _, default = compose_and_resolve(tmp_path / "run", *choices)
    assert default["data"]["path"] == "data/ml-100k"
    assert default["data"]["cache_dir"] == default["encoder"]["text_cache_dir"] == "data/cache"
    assert default["logger"]["wandb"]["save_dir"] == str(tmp_path / "run")

    monkeypatch.setenv("RECRL_DATA_DIR", str(tmp_path / "shared"))
    monkeypatch.setenv("RECRL_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    _, given = compose_and_resolve(tmp_path / "run", *choices)
    assert given["data"]["path"] == given["env"]["data"]["path"] == str(tmp_path / "shared" / "ml-100k")
    assert given["data"]["cache_dir"] == given["encoder"]["text_cache_dir"] == str(
        tmp_path / "cache")
    assert given["logger"]["wandb"]["save_dir"] == str(tmp_path / "wandb")
