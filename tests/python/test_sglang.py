"""eplb.sglang through the SGLang stand-in (tests/python/engines/sglang): the launcher spawns a
scheduler process, where only the installed eplb_engines.pth can have put eplb's policy."""
import shutil

import pytest

from conftest import ENGINES, run_json, run_python

# 61 hidden layers of which the first 3 are dense (no tokens), 32 experts in 8 groups, 8 ranks
# on 2 nodes, 16 redundant slots (48 slots, 6 per rank).
LAUNCH = """
import json
import numpy as np
import eplb
from sglang.srt.scheduler import launch

L, DENSE, E, P, R = 61, 3, 32, 48, 8
rng = np.random.default_rng(9)
counts = np.round(rng.lognormal(0, 1.5, (4, L, E)) * 50).astype(np.int32)  # [steps, L, E]
counts[:, :DENSE] = 0
{EDIT}
current = {CURRENT}
result = launch(R, 2, P - E, L, E, {GROUPS}, counts.tolist(), current, "{ALGORITHM}")
load = counts.sum(axis=0, dtype=np.int64)
moe = load[DENSE:]
result["expected_fresh"] = eplb.plan(moe, P, R, num_groups={GROUPS} or 1, num_nodes=2,
                                     policy="{POLICY}").phy2log.tolist()
if current is not None:
    result["expected_from_current"] = eplb.plan(
        moe, P, R, num_groups={GROUPS} or 1, num_nodes=2,
        previous=np.array(current)[DENSE:]).phy2log.tolist()
    result["current"] = current
print(json.dumps(result))
"""

TRIVIAL_ROW = [p % 32 for p in range(48)]


def launch(policy="balanced", current="None", groups=8, edit="", path=ENGINES, algorithm="auto",
           **env):
    code = LAUNCH.format(CURRENT=current, GROUPS=groups, POLICY=policy or "balanced", EDIT=edit,
                         ALGORITHM=algorithm)
    return run_json(code, path=path, EPLB_SGLANG_POLICY=policy, **env)


def check_dispatch_tables(r):
    """SGLang's log2phy (padded to P) agrees with phy2log, left-packed, every expert present."""
    for layer, row in enumerate(r["phy2log"]):
        for expert, slots in enumerate(r["log2phy"][layer]):
            valid = r["num_valid"][layer][expert]
            assert valid >= 1 and slots[valid:] == [-1] * (len(slots) - valid)
            assert sorted(slots[:valid]) == [p for p, e in enumerate(row) if e == expert]


def test_unset_variable_leaves_sglang_untouched():
    r = launch(policy=None)
    assert r["algorithm"] == "sglang.srt.eplb.eplb_algorithms"
    assert r["phy2log"] == [TRIVIAL_ROW] * 61


def test_balanced_plans_the_moe_layers_in_the_spawned_scheduler():
    r = launch()
    assert r["algorithm"] == "eplb.sglang"
    assert r["dtypes"] == ["torch.int64", "torch.int64"]
    assert r["phy2log"][:3] == [TRIVIAL_ROW] * 3  # dense layers: nothing to balance
    assert r["phy2log"][3:] == r["expected_fresh"]
    check_dispatch_tables(r)
    for row in r["phy2log"][3:]:
        for rank in range(8):
            assert len(set(row[rank * 6:rank * 6 + 6])) == 6  # no expert twice on a rank


def test_balanced_plans_from_the_current_map():
    # The current map: a fresh plan of other counts (dense rows trivial).
    current = ("[[p % E for p in range(P)]] * DENSE + "
               "eplb.plan(rng.integers(1, 100, (L - DENSE, E)),"
               " P, R, num_groups=8, num_nodes=2).phy2log.tolist()")
    r = launch(current=current)
    assert r["phy2log"][3:] == r["expected_from_current"] != r["expected_fresh"]
    for new_row, old_row in zip(r["phy2log"], r["current"]):
        for rank in range(8):
            new, old = new_row[rank * 6:rank * 6 + 6], old_row[rank * 6:rank * 6 + 6]
            assert all(n == o for n, o in zip(new, old) if n in old)


def test_an_idle_moe_layer_keeps_its_current_row():
    current = ("[[p % E for p in range(P)]] * DENSE + "
               "eplb.plan(rng.integers(1, 100, (L - DENSE, E)),"
               " P, R).phy2log.tolist()")
    r = launch(current=current, edit="counts[:, 10] = 0")
    assert r["phy2log"][10] == r["current"][10]
    assert r["phy2log"][11] != r["current"][11]


def test_deepseek_and_models_without_groups():
    r = launch(policy="deepseek", groups=None)
    assert r["phy2log"][3:] == r["expected_fresh"]
    check_dispatch_tables(r)


def test_an_algorithm_of_another_kind_still_plans_with_a_warning():
    r = launch(algorithm="elasticity_aware")
    assert r["algorithm"] == "eplb.sglang"
    assert r["phy2log"] == [TRIVIAL_ROW] * 61  # the stand-in's own plan
    assert ("WARNING eplb eplb: SGLang's elasticity_aware algorithm plans this rebalance; eplb's "
            "policies replace only the deepseek ones") in r["log"]


def test_taking_over_is_logged_on_the_eplb_logger():
    proc = run_python("import logging; logging.basicConfig(level=logging.INFO)\n"
                      "import sglang.srt.eplb.eplb_algorithms", EPLB_SGLANG_POLICY="deepseek")
    assert proc.returncode == 0, proc.stderr
    assert "INFO:eplb:eplb: SGLang 0.5.6 plans EPLB with eplb's deepseek policy" in proc.stderr


def test_counts_without_a_steps_axis():
    import numpy as np
    import torch

    from eplb.sglang import rebalance

    counts = np.random.default_rng(1).integers(0, 100, (2, 8, 16), dtype=np.int32)
    summed = rebalance(torch.from_numpy(counts.sum(axis=0)), 24, 6, None, 1)
    per_step = rebalance(torch.from_numpy(counts), 24, 6, None, 1)
    assert all(torch.equal(a, b) for a, b in zip(summed, per_step))
    with pytest.raises(ValueError, match=r"tokens_per_expert has shape \(16,\)"):
        rebalance(torch.zeros(16), 24, 6, None, 1)


def sglang_copy(tmp_path, layout):
    """The stand-in with its EPLB modules under sglang.srt.managers (SGLang 0.4.7, 0.4.8), or
    with no algorithm module at all."""
    root = tmp_path / "sglang"
    shutil.copytree(ENGINES / "sglang", root)
    srt = root / "srt"
    if layout == "managers":
        shutil.move(str(srt / "eplb"), str(srt / "managers"))
        for path in srt.rglob("*.py"):
            path.write_text(path.read_text().replace("sglang.srt.eplb", "sglang.srt.managers"))
    else:
        shutil.rmtree(srt / "eplb" / "eplb_algorithms")
    (root / "__init__.py").write_text(
        'import os\nFORM = os.environ.get("STANDIN_SGLANG_FORM", "0.5")\n__version__ = "0.4.7"\n')
    return tmp_path


def test_sglang_0_4_7_layout(tmp_path):
    r = launch(path=sglang_copy(tmp_path, "managers"))
    assert r["algorithm"] == "eplb.sglang"
    assert r["phy2log"][3:] == r["expected_fresh"]


EXPECTED = ("eplb.sglang was written for sglang.srt.eplb.eplb_algorithms or "
            "sglang.srt.managers.eplb_algorithms with rebalance_experts(tokens_per_expert, "
            "num_physical_experts, num_local_physical_experts, num_groups, num_nodes, algorithm), "
            "as in SGLang 0.4.7 to 0.5.x")


def test_an_unknown_layout_is_refused_when_sglang_is_imported(tmp_path):
    proc = run_python("import sglang.srt", path=sglang_copy(tmp_path, "none"),
                      EPLB_SGLANG_POLICY="balanced")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "eplb._engines.EngineInterfaceError: eplb.sglang: SGLang 0.4.7 has neither "
        f"sglang.srt.eplb.eplb_algorithms nor sglang.srt.managers.eplb_algorithms; {EXPECTED}")
    assert run_python("import sglang.srt", path=tmp_path).returncode == 0  # unset: untouched


@pytest.mark.parametrize("env, message", [
    ({"STANDIN_SGLANG_FORM": "changed-parameters", "EPLB_SGLANG_POLICY": "balanced"},
     "eplb._engines.EngineInterfaceError: eplb.sglang: SGLang 0.99.0 declares "
     "sglang.srt.eplb.eplb_algorithms.rebalance_experts(tokens_per_expert, num_physical_experts, "
     f"num_groups, algorithm); {EXPECTED}"),
    ({"EPLB_SGLANG_POLICY": "greedy"},
     'ValueError: EPLB_SGLANG_POLICY = "greedy" is not one of: balanced, deepseek'),
])
def test_refusals(env, message):
    proc = run_python("import sglang.srt.eplb.eplb_algorithms", **env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == message


def test_slots_not_a_multiple_of_the_local_slots_are_refused():
    import torch

    from eplb.sglang import rebalance

    with pytest.raises(ValueError) as error:
        rebalance(torch.ones(1, 2, 8, dtype=torch.int32), 10, 4, None, 1)
    assert str(error.value) == ("num_physical_experts = 10 is not a multiple of "
                                "num_local_physical_experts = 4")


def test_a_refusal_is_not_lost_when_the_import_is_retried(tmp_path):
    code = """
import sys
for attempt in range(2):
    try:
        import sglang.srt
        print("imported untouched")
    except Exception as error:
        print(type(error).__name__)
"""
    proc = run_python(code, path=sglang_copy(tmp_path, "none"), EPLB_SGLANG_POLICY="balanced")
    assert proc.stdout.split() == ["EngineInterfaceError", "EngineInterfaceError"]
