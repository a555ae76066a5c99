"""eplb.vllm_ascend through the vllm-ascend stand-in (tests/python/engines/vllm_ascend): the
plugin is loaded from the installed package's `vllm.general_plugins` entry point, the policy runs
in vllm-ascend's EPLB child process (forked or spawned) and passes vllm-ascend's map checker."""
import pytest

from conftest import run_json, run_python

# 6 MoE layers, 32 experts, 8 ranks × 5 slots. The current table is a fresh plan of other loads;
# the workload (tokens per slot) comes from new loads, split evenly over an expert's replicas.
UPDATE = """
import json
import numpy as np, torch
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm_ascend.eplb.core.eplb_worker import EplbProcess
import eplb

L, E, R, S = 6, 32, 8, 5
rng = np.random.default_rng(4)
table = eplb.plan(rng.integers(1, 1000, (L, E)), R * S, R).phy2log
load = np.round(rng.lognormal(0, 1.5, (L, E)) * 100)
counts = np.stack([np.bincount(row, minlength=E) for row in table])
workload = np.stack([load[l][table[l]] / counts[l][table[l]] for l in range(L)])
old = torch.from_numpy(table.reshape(L, R, S))
changed, priority, new, reverted = EplbProcess(1, "{START}").run(
    old.clone(), torch.from_numpy(np.round(workload).astype(np.int64).reshape(L, R, S)))
summed = np.stack([np.bincount(table[l], weights=np.round(workload[l]), minlength=E)
                   for l in range(L)])
expected = eplb.plan(summed, R * S, R, previous=table)
# The busiest rank's load is the mean over the balancedness (the mean does not change).
busiest = lambda m: summed.sum(axis=1) / R / eplb.evaluate(m, summed).balancedness
gain = busiest(eplb.ExpertMap.from_phy2log(table, E, R)) - busiest(expected)
print(json.dumps({{"changed": changed, "priority": [int(p) for p in priority],
                  "new": new.reshape(L, R * S).tolist(), "old": table.tolist(),
                  "reverted": reverted, "expected": expected.phy2log.tolist(),
                  "type": str(new.dtype), "gain": gain.tolist()}}))
"""


def update(start="fork", **env):
    return run_json(UPDATE.format(START=start), **env)


def test_unset_variable_leaves_vllm_ascend_untouched():
    r = update()
    assert r["new"] == r["old"] and r["changed"] == 0


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize("form", ["0.11", "0.20"])
def test_balanced_passes_the_map_checker(form, start):
    r = update(start, STANDIN_VLLM_ASCEND_FORM=form, EPLB_VLLM_ASCEND_POLICY="balanced")
    assert r["reverted"] == []
    assert r["new"] == r["expected"] != r["old"]
    assert r["changed"] == 1 and r["type"] == "torch.int64"
    assert sorted(r["priority"]) == list(range(6))


def test_priority_puts_the_largest_gain_first():
    r = update(EPLB_VLLM_ASCEND_POLICY="balanced")
    gains = [r["gain"][layer] for layer in r["priority"]]
    assert gains == sorted(gains, reverse=True) and gains[0] > 0


EXPECTED = ("eplb.vllm_ascend was written for vllm_ascend.eplb.core.policy.policy_factory."
            "PolicyFactory.generate_policy(policy_type[, config]), as in vllm-ascend 0.11 to 0.27")


@pytest.mark.parametrize("env, message", [
    ({"STANDIN_VLLM_ASCEND_FORM": "changed-parameters", "EPLB_VLLM_ASCEND_POLICY": "balanced"},
     "eplb._engines.EngineInterfaceError: eplb.vllm_ascend: vllm-ascend 0.99.0 declares "
     f"PolicyFactory.generate_policy(policy_type, config, stage); {EXPECTED}"),
    ({"EPLB_VLLM_ASCEND_POLICY": "deepseek"},
     'ValueError: EPLB_VLLM_ASCEND_POLICY = "deepseek" is not one of: balanced'),
])
def test_refusals(env, message):
    proc = run_python(UPDATE.format(START="fork"), **env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == message


def test_vllm_ascend_without_the_policy_factory_is_refused_at_plugin_load(tmp_path):
    (tmp_path / "vllm_ascend").mkdir()
    (tmp_path / "vllm_ascend" / "__init__.py").write_text('__version__ = "0.9.0"\n')
    import shutil

    from conftest import ENGINES

    shutil.copytree(ENGINES / "vllm", tmp_path / "vllm")
    proc = run_python("from vllm.plugins import load_general_plugins; load_general_plugins()",
                      path=tmp_path, EPLB_VLLM_ASCEND_POLICY="balanced")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "eplb._engines.EngineInterfaceError: eplb.vllm_ascend: vllm-ascend 0.9.0 has no "
        f"vllm_ascend.eplb.core.policy.policy_factory; {EXPECTED}")


def test_elastic_scaling_plans_fresh_for_the_new_number_of_ranks():
    code = """
import json
import numpy as np
from eplb.vllm_ascend import BalancedAscendPolicy
policy = BalancedAscendPolicy()
table = np.array([[[0, 1, 2, 3], [4, 5, 0, 1]]])  # 1 layer, 2 ranks of 4 slots, 6 experts
workload = np.array([[[9, 1, 1, 1], [1, 1, 9, 1]]])
policy.set_new_ep_size(3)
changed, priority, new = policy.rebalance_experts(table, workload)
print(json.dumps({"new": new.tolist(), "changed": changed, "priority": priority.tolist()}))
"""
    r = run_json(code)
    assert len(r["new"][0]) == 3 and all(len(rank) == 4 for rank in r["new"][0])
    assert set(sum(r["new"][0], [])) == set(range(6))
    assert r["changed"] == 1 and r["priority"] == [0]


def test_multi_stage_workloads_are_summed_over_stages():
    import numpy as np

    import eplb
    from eplb.vllm_ascend import BalancedAscendPolicy

    table = eplb.plan(None, 12, 3, policy="contiguous", num_layers=2,
                      num_logical_experts=8).phy2log.reshape(2, 3, 4)
    stages = np.random.default_rng(2).integers(0, 50, (3, 2, 3, 4))
    staged = BalancedAscendPolicy().rebalance_experts(table, stages)
    summed = BalancedAscendPolicy().rebalance_experts(table, stages.sum(axis=0))
    assert staged[0] == summed[0] and staged[1].tolist() == summed[1].tolist()
    assert staged[2].tolist() == summed[2].tolist()


def test_taking_over_is_logged_on_the_eplb_logger():
    proc = run_python("import logging; logging.basicConfig(level=logging.INFO)\n"
                      "from vllm.plugins import load_general_plugins; load_general_plugins()\n"
                      "import vllm_ascend.eplb.core.policy.policy_factory",
                      EPLB_VLLM_ASCEND_POLICY="balanced")
    assert proc.returncode == 0, proc.stderr
    assert ("INFO:eplb:eplb: vllm-ascend 0.20.0 plans EPLB with eplb's balanced policy"
            in proc.stderr)
