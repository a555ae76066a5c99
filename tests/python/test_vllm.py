"""eplb.vllm through the vLLM stand-in (tests/python/engines/vllm): the plugin is loaded from the
installed package's `vllm.general_plugins` entry point, as vLLM loads it in every process."""
import shutil

import pytest

from conftest import ENGINES, run_json, run_python

# Loads the plugins, then rearranges as vLLM does with the policy registered under "default".
# OLD: the current map passed as old_global_expert_indices ("contiguous": a valid map).
REARRANGE = """
import json, sys
import numpy as np, torch
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm.distributed.eplb.eplb_state import EplbState
from vllm.distributed.eplb.policy import EPLB_POLICIES
import eplb

L, E, P, R, G, N = 4, 32, {P}, 8, 4, 2
rng = np.random.default_rng(5)
weight = torch.from_numpy(np.round(rng.lognormal(0, 1.5, (L, E)) * 100).astype(np.int64))
old = torch.from_numpy(eplb.plan(None, P, R, policy="contiguous", num_layers=L,
                                 num_logical_experts=E).phy2log)
old = {OLD}
phy2log, log2phy, logcnt = EplbState().rearrange(weight, P, G, N, R, old, use_async={ASYNC})
fresh = eplb.rebalance_experts(weight, P, G, N, R, tables=True)
try:
    from_old = eplb.rebalance_experts(weight, P, G, N, R, previous=old).tolist()
except ValueError:  # not a usable previous map
    from_old = None
deepseek = eplb.rebalance_experts(weight, P, G, N, R, policy="deepseek")
print(json.dumps({{
    "policy": EPLB_POLICIES["default"].__name__,
    "types": [(str(t.dtype), t.device.type) for t in (phy2log, log2phy, logcnt)],
    "shapes": [list(t.shape) for t in (phy2log, log2phy, logcnt)],
    "phy2log": phy2log.tolist(), "log2phy": log2phy.tolist(), "logcnt": logcnt.tolist(),
    "old": old.tolist(), "fresh": fresh[0].tolist(), "fresh_tables": [t.tolist() for t in fresh],
    "from_old": from_old, "deepseek": deepseek.tolist(),
}}))
"""


def rearrange(form="0.23", policy="balanced", use_async=False, old="old", num_slots=48, **env):
    return run_json(REARRANGE.format(P=num_slots, OLD=old, ASYNC=use_async),
                    STANDIN_VLLM_FORM=form, EPLB_VLLM_POLICY=policy, **env)


def check_consistent(r, num_ranks=8):
    """log2phy/logcnt agree with phy2log; no rank holds two replicas of one expert."""
    for layer, row in enumerate(r["phy2log"]):
        for expert, count in enumerate(r["logcnt"][layer]):
            slots = [s for s in r["log2phy"][layer][expert] if s >= 0]
            assert len(slots) == count and all(row[s] == expert for s in slots)
        per_rank = len(row) // num_ranks
        for rank in range(num_ranks):
            held = row[rank * per_rank:(rank + 1) * per_rank]
            assert len(set(held)) == len(held)


def test_unset_variable_leaves_vllm_untouched():
    r = rearrange(policy=None)
    assert r["policy"] == "DefaultEplbPolicy"
    assert r["phy2log"] == [[p % 32 for p in range(48)]] * 4  # the stand-in's own plan


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("form", ["0.13", "0.18", "0.23"])
def test_balanced_replaces_the_default_policy(form, use_async):
    r = rearrange(form=form, use_async=use_async)
    assert r["policy"] == "EplbBalancedPolicy"
    assert r["types"] == [["torch.int64", "cpu"]] * 3
    assert r["shapes"] == [[4, 48], [4, 32, 17], [4, 32]]
    check_consistent(r)
    if form == "0.13":
        # No old map is passed: the fresh plan, its three tables as eplb returned them.
        assert [r["phy2log"], r["log2phy"], r["logcnt"]] == r["fresh_tables"]
    else:
        # The current map is passed: balanced plans from it.
        assert r["phy2log"] == r["from_old"] != r["fresh"]


def test_staying_experts_keep_their_slot():
    r = rearrange(form="0.18")
    for new_row, old_row in zip(r["phy2log"], r["old"]):
        for rank in range(8):
            new, old = new_row[rank * 6:rank * 6 + 6], old_row[rank * 6:rank * 6 + 6]
            assert all(n == o for n, o in zip(new, old) if n in old)


@pytest.mark.parametrize("old", ["torch.where(old % 7 == 0, -1, old)",  # elastic scale-up
                                 "old[:, :40]",  # a scale-down: another width
                                 "torch.zeros_like(old)"])  # not a map of E experts
def test_an_unusable_old_map_is_ignored(old):
    r = rearrange(form="0.23", old=old)
    assert r["phy2log"] == r["fresh"]


def test_deepseek_is_the_reference_plan():
    r = rearrange(policy="deepseek")
    assert r["policy"] == "EplbDeepseekPolicy"
    assert r["phy2log"] == r["deepseek"]


def test_balanced_options_come_from_the_environment():
    r = rearrange(EPLB_BALANCED_OPTIONS="max_received_per_rank=1")
    for new_row, old_row in zip(r["phy2log"], r["old"]):
        for rank in range(8):
            new, old = new_row[rank * 6:rank * 6 + 6], old_row[rank * 6:rank * 6 + 6]
            assert len(set(new) - set(old)) <= 1
    assert r["phy2log"] != r["from_old"]


def last_error_line(proc):
    assert proc.returncode != 0
    return proc.stderr.strip().splitlines()[-1]


REARRANGE_ONLY = """
from vllm.plugins import load_general_plugins
load_general_plugins()
import torch
from vllm.distributed.eplb.eplb_state import EplbState
EplbState().rearrange(torch.ones(2, 8, dtype=torch.int64), {P}, 1, 1, 4,
                      torch.arange({P}).repeat(2, 1) % 8)
"""


def test_slots_not_a_multiple_of_ranks_are_refused():
    proc = run_python(REARRANGE_ONLY.format(P=10), STANDIN_VLLM_FORM="0.23",
                      EPLB_VLLM_POLICY="balanced")
    assert last_error_line(proc) == (
        "ValueError: num_replicas = 10 is not a multiple of num_ranks = 4: vLLM gives every rank "
        "the same number of slots")


EXPECTED = ("eplb.vllm was written for vllm.distributed.eplb.policy.EPLB_POLICIES and "
            "AbstractEplbPolicy.rebalance_experts(weight, num_replicas, num_groups, num_nodes, "
            "num_ranks[, old_global_expert_indices]) returning phy2log or (phy2log, log2phy, "
            "logcnt), as in vLLM 0.13 to 0.32")


@pytest.mark.parametrize("form, what", [
    ("changed-parameters", "declares AbstractEplbPolicy.rebalance_experts(weight, num_replicas, "
                           "num_ranks)"),
    ("changed-return", "declares AbstractEplbPolicy.rebalance_experts(...) -> <class 'dict'>"),
])
def test_another_interface_is_refused(form, what):
    proc = run_python(REARRANGE_ONLY.format(P=8), STANDIN_VLLM_FORM=form,
                      EPLB_VLLM_POLICY="balanced")
    assert last_error_line(proc) == (f"eplb._engines.EngineInterfaceError: eplb.vllm: vLLM 0.99.0 "
                                     f"{what}; {EXPECTED}")
    # Without the variable the same vLLM runs untouched.
    assert run_python(REARRANGE_ONLY.format(P=8), STANDIN_VLLM_FORM=form).returncode == 0


def test_vllm_without_policy_classes_is_refused_at_plugin_load(tmp_path):
    old_vllm = tmp_path / "vllm"
    shutil.copytree(ENGINES / "vllm", old_vllm)
    shutil.rmtree(old_vllm / "distributed" / "eplb" / "policy")
    (old_vllm / "__init__.py").write_text('__version__ = "0.12.0"\n')
    proc = run_python("from vllm.plugins import load_general_plugins; load_general_plugins()",
                      path=tmp_path, EPLB_VLLM_POLICY="balanced")
    assert last_error_line(proc) == ("eplb._engines.EngineInterfaceError: eplb.vllm: vLLM 0.12.0 "
                                     f"has no vllm.distributed.eplb.policy; {EXPECTED}")


@pytest.mark.parametrize("env, message", [
    ({"EPLB_VLLM_POLICY": "greedy"},
     'ValueError: EPLB_VLLM_POLICY = "greedy" is not one of: balanced, deepseek'),
    ({"EPLB_VLLM_POLICY": "balanced", "EPLB_BALANCED_OPTIONS": "tolerance=2"},
     "ValueError: EPLB_BALANCED_OPTIONS: tolerance = 2 is out of range [0, 1]"),
    ({"EPLB_VLLM_POLICY": "balanced", "EPLB_BALANCED_OPTIONS": "speed=3"},
     'ValueError: EPLB_BALANCED_OPTIONS: "speed=3" is not KEY=VALUE with KEY one of: tolerance, '
     'max_received_per_rank, max_received_per_layer, min_gain, gain_per_move, node_affinity, '
     'threads'),
    ({"EPLB_VLLM_POLICY": "balanced", "EPLB_BALANCED_OPTIONS": "threads=two"},
     'ValueError: EPLB_BALANCED_OPTIONS: threads = "two" is not a valid int'),
    ({"EPLB_VLLM_POLICY": "deepseek", "EPLB_BALANCED_OPTIONS": "threads=2"},
     "ValueError: EPLB_BALANCED_OPTIONS is set, but the policy is deepseek, not balanced"),
])
def test_bad_variables_are_refused_at_plugin_load(env, message):
    proc = run_python("from vllm.plugins import load_general_plugins; load_general_plugins()",
                      **env)
    assert last_error_line(proc) == message


def test_vllm_plugins_can_leave_eplb_out():
    r = rearrange(VLLM_PLUGINS="some_other_plugin")
    assert r["policy"] == "DefaultEplbPolicy"


def test_taking_over_is_logged_on_the_eplb_logger():
    proc = run_python("import logging; logging.basicConfig(level=logging.INFO)\n" +
                      REARRANGE_ONLY.format(P=8), EPLB_VLLM_POLICY="balanced")
    assert proc.returncode == 0, proc.stderr
    assert "INFO:eplb:eplb: vLLM 0.23.0 plans EPLB with eplb's balanced policy" in proc.stderr


def test_vllm_plugins_can_leave_the_vllm_ascend_adapter_out():
    code = ("from vllm.plugins import load_general_plugins; load_general_plugins()\n"
            "import sys; print(sorted(m for m in sys.modules if m.startswith('eplb')))")
    out = run_python(code, VLLM_PLUGINS="eplb_vllm", EPLB_VLLM_POLICY="balanced",
                     EPLB_VLLM_ASCEND_POLICY="balanced")
    assert out.returncode == 0, out.stderr
    assert "eplb.vllm_ascend" not in out.stdout and "eplb.vllm'" in out.stdout


def test_an_adapter_that_cannot_load_fails_the_start_instead_of_leaving_vllm_as_it_is(tmp_path):
    shutil.copytree(ENGINES / "vllm", tmp_path / "vllm")
    (tmp_path / "numpy").mkdir()  # a numpy that cannot be imported: eplb cannot load
    (tmp_path / "numpy" / "__init__.py").write_text("raise ImportError('numpy is broken')\n")
    code = "from vllm.plugins import load_general_plugins; load_general_plugins()"
    assert run_python(code, path=tmp_path).returncode == 0  # unset: nothing is imported
    proc = run_python(code, path=tmp_path, EPLB_VLLM_POLICY="balanced")
    assert last_error_line(proc) == "ImportError: numpy is broken"


def test_installing_twice_is_harmless_and_the_class_pickles_by_name():
    code = """
import json, pickle
from vllm.plugins import load_general_plugins
load_general_plugins()
from vllm.distributed.eplb import policy as module
import eplb.vllm
eplb.vllm.install(module, "balanced")
print(json.dumps([str(module.EPLB_POLICIES["default"]),
                  pickle.dumps(module.EPLB_POLICIES["default"]).hex()]))
"""
    name, pickled = run_json(code, EPLB_VLLM_POLICY="balanced")
    assert name == "<class 'eplb.vllm.EplbBalancedPolicy'>"  # as the README shows it
    # Another process, which loaded no plugin, finds the class by name and plans with it.
    code = f"""
import json, pickle, torch
cls = pickle.loads(bytes.fromhex("{pickled}"))
phy2log = cls.rebalance_experts(torch.ones(2, 8, dtype=torch.int64), 8, 1, 1, 4)
print(json.dumps([cls.__module__, cls.__name__, phy2log.shape[1]]))
"""
    assert run_json(code, EPLB_VLLM_POLICY="balanced") == ["eplb.vllm", "EplbBalancedPolicy", 8]
