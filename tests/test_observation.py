"""The observation contract (`recrl.observation`): evaluation code reads it without a simulator."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import recrl.envs.logged
from recrl import observation
from recrl.envs import InterestEvolutionEnv
from tests.conftest import REPO_ROOT


@pytest.fixture(scope="module")
def fresh_imports() -> dict[str, list[str]]:
    """In one fresh interpreter (this one has imported everything already): the simulator
    modules loaded by the evaluation side's imports, then the post-run tools loaded once the
    training path is imported too. One start-up for both checks."""
    code = ("import json, sys, recrl.ranking, recrl.baselines, recrl.callbacks, recrl.evaluation, "
            "recrl.results; "
            "envs = sorted(m for m in sys.modules if m.startswith('recrl.envs')); "
            "import recrl.run, recrl.build, lightning_modules, lightning_modules.reinforce; "
            "tools = sorted(m for m in sys.modules if m in ('recrl.compare', 'recrl.report')); "
            "print(json.dumps({'envs': envs, 'tools': tools}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_evaluation_side_imports_no_simulator(fresh_imports) -> None:
    """Ranking, baselines, callbacks and evaluation depend on the observation, not on the code
    that simulates one."""
    assert fresh_imports["envs"] == []


def test_the_training_path_imports_no_post_run_tool(fresh_imports) -> None:
    """A run (the CLI, the builder, every algorithm) never loads the tools that read finished
    runs: comparing and reporting can change without touching training."""
    assert fresh_imports["tools"] == []


def test_simulators_write_the_shared_codes() -> None:
    """The simulators use the observation module's codes (one definition, no copies)."""
    assert recrl.envs.logged.MAX_RATING is observation.MAX_RATING
    env = InterestEvolutionEnv(num_users=8, num_items=50, history_length=4, seed=0)
    spec = env.observation_spec["history_response"]
    assert (spec.space.low.min().item(), spec.space.high.max().item()) == (
        observation.PADDING, observation.CLICKED)
    td = env.rollout(6, policy=lambda td: td.set(
        "action", observation.uniform_valid_action(td["action_mask"])))
    codes = set(td["next", "history_response"].unique().tolist())
    assert codes <= {observation.PADDING, observation.SHOWN, observation.CLICKED}
    assert observation.NUM_RESPONSE_CODES == 3
    assert (td["next", "history"][..., -1] != observation.PADDING_ITEM).all()
    assert set(td.keys()) >= set(observation.HISTORY_KEYS)
