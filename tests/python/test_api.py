"""The eplb package's API: planning, maps, formats, metrics, types and errors."""
import json
import os
import struct

import numpy as np
import pytest
import torch

import eplb

# DeepSeek's published example (REFERENCE-ALGORITHM.md).
EXAMPLE = [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
           [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]]
EXAMPLE_PHY2LOG = [[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                   [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]]


def fnv1a(values):
    """The map hash as core/expert_map.h defines it, over little-endian int32 values."""
    h = 0xCBF29CE484222325
    for byte in b"".join(struct.pack("<i", int(v)) for v in values):
        h = ((h ^ byte) * 0x100000001B3) % (1 << 64)
    return h


def ranks_of(phy2log, num_ranks):
    """[L, R, S] view of a map with equal slots per rank."""
    phy2log = np.asarray(phy2log)
    return phy2log.reshape(phy2log.shape[0], num_ranks, -1)


def test_deepseek_reproduces_the_published_example():
    phy2log, log2phy, logcnt = eplb.rebalance_experts(
        torch.tensor(EXAMPLE), 16, 4, 2, 8, policy="deepseek", tables=True)
    assert phy2log.tolist() == EXAMPLE_PHY2LOG
    assert logcnt.tolist() == [[1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1],
                               [1, 2, 1, 1, 1, 2, 2, 1, 2, 1, 1, 1]]
    assert log2phy.shape == (2, 12, 5)
    assert log2phy[0, 1].tolist() == [15, 13, -1, -1, -1]  # replica order, not slot order
    assert log2phy[0, 5].tolist() == [0, 2, -1, -1, -1]


def test_results_come_back_as_the_callers_type():
    as_tensor = eplb.rebalance_experts(torch.tensor(EXAMPLE, dtype=torch.int32), 16, 4, 2, 8)
    assert isinstance(as_tensor, torch.Tensor)
    assert as_tensor.dtype == torch.int64 and as_tensor.device.type == "cpu"
    tables = eplb.rebalance_experts(torch.tensor(EXAMPLE), 16, 4, 2, 8, tables=True)
    assert all(isinstance(t, torch.Tensor) and t.dtype == torch.int64 for t in tables)
    assert [tuple(t.shape) for t in tables] == [(2, 16), (2, 12, 5), (2, 12)]

    as_array = eplb.rebalance_experts(np.array(EXAMPLE), 16, 4, 2, 8)
    assert isinstance(as_array, np.ndarray) and as_array.dtype == np.int64
    as_list = eplb.rebalance_experts(EXAMPLE, 16, 4, 2, 8)
    assert isinstance(as_list, np.ndarray)
    assert as_tensor.tolist() == as_array.tolist() == as_list.tolist()


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.uint8, torch.float16,
                                   torch.bfloat16, torch.float32, torch.float64])
def test_any_integer_or_float_dtype_plans_the_same(dtype):
    weight = torch.tensor(EXAMPLE).clamp(max=255)
    expected = eplb.rebalance_experts(weight, 16, 4, 2, 8, policy="deepseek")
    assert eplb.rebalance_experts(weight.to(dtype), 16, 4, 2, 8,
                                  policy="deepseek").tolist() == expected.tolist()


def test_a_cpu_tensor_is_read_without_a_copy_and_not_changed():
    weight = torch.tensor(EXAMPLE, dtype=torch.float64)
    before = weight.clone()
    from eplb._arrays import as_numpy

    array, _ = as_numpy(weight)
    assert array.ctypes.data == weight.data_ptr()
    eplb.rebalance_experts(weight, 16, 4, 2, 8)
    assert torch.equal(weight, before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_gpu_tensor_gives_gpu_tensors():
    result = eplb.rebalance_experts(torch.tensor(EXAMPLE, device="cuda"), 16, 4, 2, 8,
                                    tables=True)
    assert all(t.device.type == "cuda" for t in result)


@pytest.mark.parametrize("call, message", [
    (lambda: eplb.rebalance_experts(np.array(EXAMPLE, dtype=bool), 16, 4, 2, 8),
     "load has dtype bool, expected an integer or floating dtype"),
    (lambda: eplb.rebalance_experts(np.zeros(12), 16, 4, 2, 8),
     "load has shape (12,), expected 2-D [layers, experts]"),
    (lambda: eplb.rebalance_experts(np.array([[1.0, -1.0, 2.0, 3.0]]), 4, 1, 1, 2),
     "load[0][1] = -1 is negative"),
    (lambda: eplb.rebalance_experts(np.array([[1.0, np.nan, 2.0, 3.0]]), 4, 1, 1, 2),
     "load[0][1] = nan is not a finite number"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 10, 4, 2, 8),
     "num_physical_experts = 10 is out of range [12, 192] (max(num_logical_experts, num_ranks) "
     "≤ num_physical_experts ≤ 16 × num_logical_experts)"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 5, 2, 8),
     "num_groups = 5 does not divide num_logical_experts = 12 (groups hold equal numbers of "
     "experts)"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 3, 8),
     "num_nodes = 3 does not divide num_ranks = 8 (nodes hold equal numbers of ranks)"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 18, 4, 2, 8, policy="deepseek"),
     "policy deepseek needs num_physical_experts (18) to be a multiple of num_ranks (8)"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 2, 8, policy="greedy"),
     'policy = "greedy" is not one of: contiguous, deepseek, balanced'),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 2, 8, policy="deepseek",
                                    options=eplb.BalancedOptions()),
     "options of policy balanced were given for policy deepseek"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 2, 8, previous=np.full((2, 16), -1)),
     "previous: phy2log[0][0] = -1 is out of range [0, 11]"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 2, 8, previous=np.zeros((2, 16), np.int64)),
     "previous: logical expert 1 of layer 0 has no slot in phy2log"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 2, 8, previous=np.zeros((2, 16))),
     "previous: phy2log has dtype float64, expected an integer dtype"),
    (lambda: eplb.BalancedOptions(tolerance=2), "tolerance = 2 is out of range [0, 1]"),
    (lambda: eplb.BalancedOptions(threads=-1), "threads = -1 is out of range [0, 1024]"),
    (lambda: eplb.BalancedOptions(gain_per_move=-0.5),
     "gain_per_move = -0.5 is out of range [0, 1]"),
])
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_balanced_beats_deepseek_and_never_doubles_an_expert_on_a_rank(rng):
    load = np.round(rng.lognormal(0, 1.5, size=(16, 64)) * 1000)
    balanced = eplb.plan(load, 96, 16, num_groups=8, num_nodes=2)
    deepseek = eplb.plan(load, 96, 16, num_groups=8, num_nodes=2, policy="deepseek")
    assert (eplb.evaluate(balanced, load).mean_balancedness >
            eplb.evaluate(deepseek, load).mean_balancedness)
    for layer in ranks_of(balanced.phy2log, 16):
        for rank in layer:
            assert len(set(rank.tolist())) == len(rank)


def test_balanced_keeps_the_slot_of_every_expert_that_stays_on_its_rank(rng):
    load = np.round(rng.lognormal(0, 1.0, size=(8, 64)) * 1000)
    previous = eplb.plan(load, 80, 16)
    drifted = load * rng.uniform(0.5, 1.5, size=load.shape)
    planned = eplb.rebalance_experts(drifted, 80, 1, 1, 16, previous=previous.phy2log)
    moved = 0
    for old_layer, new_layer in zip(ranks_of(previous.phy2log, 16), ranks_of(planned, 16)):
        for old, new in zip(old_layer, new_layer):
            stays = np.isin(new, old)
            assert (new[stays] == old[stays]).all()
            moved += int((~stays).sum())
    assert moved > 0  # the drift made it move something


def test_uneven_slots_per_rank_are_planned_by_balanced():
    m = eplb.plan(np.arange(1, 13)[None, :], 14, 4)
    assert m.slots_per_rank == [4, 4, 3, 3]
    assert m.num_physical_experts == 14


def test_contiguous_needs_no_load():
    m = eplb.plan(None, 10, 4, policy="contiguous", num_layers=2, num_logical_experts=8)
    assert m.phy2log.tolist() == [[0, 1, 2, 2, 3, 1, 4, 5, 6, 7]] * 2
    with pytest.raises(ValueError, match="num_layers = 0 is out of range"):
        eplb.plan(None, 10, 4, policy="contiguous")


def test_expert_map_tables_hash_and_equality():
    m = eplb.ExpertMap.from_phy2log(np.array(EXAMPLE_PHY2LOG), 12, 8)
    assert (m.num_layers, m.num_logical_experts, m.num_physical_experts, m.num_ranks) == (2, 12,
                                                                                          16, 8)
    assert m.slots_per_rank == [2] * 8
    assert m.hash == fnv1a([2, 12, 16, 8] + sum(EXAMPLE_PHY2LOG, []))
    again = eplb.ExpertMap.from_tables(m.phy2log, m.log2phy, m.logcnt, 8)
    assert again == m and hash(again) == hash(m)
    other = eplb.ExpertMap.from_phy2log(np.array(EXAMPLE_PHY2LOG)[::-1], 12, 8)
    assert other != m and other.hash != m.hash
    with pytest.raises(ValueError, match=r"log2phy has shape \(2, 12, 4\), expected \(2, 12, 5\)"):
        eplb.ExpertMap.from_tables(m.phy2log, m.log2phy[:, :, :4], m.logcnt, 8)
    with pytest.raises(ValueError, match="num_ranks = 17 is out of range"):
        eplb.ExpertMap.from_phy2log(m.phy2log, 12, 17)


@pytest.mark.parametrize("fmt", eplb.MAP_FORMATS)
def test_maps_round_trip_through_every_format(tmp_path, fmt):
    m = eplb.ExpertMap.from_phy2log(np.array(EXAMPLE_PHY2LOG), 12, 8)
    path = str(tmp_path / f"map-{fmt}.json")
    m.write(path, format=fmt, version=3)
    hints = {"num_ranks": 8, "num_logical_experts": 12}
    assert eplb.ExpertMap.read(path, **hints) == m
    assert eplb.ExpertMap.from_text(m.to_text(fmt), **hints) == m


def test_a_failed_write_leaves_the_file_as_it_was(tmp_path):
    m = eplb.ExpertMap.from_phy2log(np.array(EXAMPLE_PHY2LOG), 12, 8)
    path = tmp_path / "map.json"
    path.write_text("previous contents")
    with pytest.raises(ValueError, match='"yaml"'):
        m.write(str(path), format="yaml")
    with pytest.raises(ValueError, match="version = -1 is negative"):
        m.write(str(path), version=-1)
    assert path.read_text() == "previous contents"
    with pytest.raises(FileNotFoundError):
        m.write(str(tmp_path / "missing" / "map.json"))
    (tmp_path / "sub").mkdir()
    with pytest.raises(OSError) as error:  # a directory is in the way: the rename fails
        m.write(str(tmp_path / "sub"))
    assert type(error.value) is OSError and str(tmp_path / "sub") in str(error.value)
    assert sorted(os.listdir(tmp_path)) == ["map.json", "sub"] and not os.listdir(tmp_path / "sub")


def test_reading_a_bad_map_names_the_file_and_the_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"physical_to_logical_map": [[0, 1, 7]]}')
    with pytest.raises(ValueError) as error:
        eplb.ExpertMap.read(str(path), num_ranks=1, num_logical_experts=3)
    assert str(error.value).startswith(f"{path}: ")
    assert "physical_to_logical_map[0][2] = 7" in str(error.value)
    with pytest.raises(FileNotFoundError, match="cannot open"):
        eplb.ExpertMap.read(str(tmp_path / "none.json"))
    with pytest.raises(OSError) as error:
        eplb.ExpertMap.read(str(tmp_path))
    assert str(error.value) == f"{tmp_path} is not a regular file (a directory)"


def test_evaluate_reports_balance_and_movement():
    # One layer, 4 experts on 2 ranks with 2 slots each: rank loads 1 + 2 and 3 + 4.
    m = eplb.ExpertMap.from_phy2log(np.array([[0, 1, 2, 3]]), 4, 2)
    e = eplb.evaluate(m, [[1, 2, 3, 4]])
    assert e.balancedness.tolist() == [pytest.approx(5 / 7)]
    assert e.min_balancedness == e.mean_balancedness == pytest.approx(5 / 7)
    assert e.max_over_bound.tolist() == [pytest.approx(7 / 5)]
    # Two slots per rank: the count bound pairs 4 + 1 and 3 + 2, as tight here as the mean.
    assert e.max_over_count_bound.tolist() == [pytest.approx(7 / 5)]
    # With loads 1, 2, 3, 10 the basic bound is 10 (the heaviest expert), the count bound 11 (the
    # best pairing, 10 + 1): the map's 3 + 10 is 1.3 and 13 / 11 over them.
    skewed = eplb.evaluate(m, [[1, 2, 3, 10]])
    assert skewed.max_over_bound.tolist() == [pytest.approx(13 / 10)]
    assert skewed.mean_max_over_count_bound == pytest.approx(13 / 11)
    assert e.slots_changed is None and e.bytes_moved is None

    better = eplb.ExpertMap.from_phy2log(np.array([[0, 3, 1, 2]]), 4, 2)
    e = eplb.evaluate(better, [[1, 2, 3, 4]], previous=m, bytes_per_expert=100)
    assert e.balancedness.tolist() == [1.0]
    assert (e.slots_changed, e.experts_received, e.max_experts_received_by_a_rank,
            e.bytes_moved) == (3, 2, 1, 200)
    assert e.experts_received_per_rank.tolist() == [1, 1]
    with pytest.raises(ValueError, match="load has 3 experts per layer"):
        eplb.evaluate(m, [[1, 2, 3]])
    with pytest.raises(ValueError, match="previous map has"):
        eplb.evaluate(m, [[1, 2, 3, 4]], previous=eplb.ExpertMap.from_phy2log(
            np.array([[0, 1, 2, 3, 0, 1]]), 4, 2))


def test_import_eplb_does_not_import_torch():
    from conftest import run_json

    loaded = run_json("import sys, json, eplb; print(json.dumps('torch' in sys.modules))")
    assert loaded is False


def test_the_startup_hook_is_installed_and_inert_without_its_variable():
    import site

    from conftest import run_json

    assert any(os.path.exists(os.path.join(d, "eplb_engines.pth"))
               for d in site.getsitepackages())
    loaded = run_json("import sys, json; print(json.dumps(sorted(m for m in sys.modules "
                      "if 'eplb' in m)))")
    assert loaded == []


def test_the_wheel_loads_its_own_abseil_and_yaml_libraries():
    from conftest import run_json

    mapped = run_json("import json, eplb; print(json.dumps(sorted({line.split()[-1] for line in "
                      "open('/proc/self/maps') if 'libabsl' in line or 'libyaml' in line})))")
    assert any("libabsl" in path for path in mapped) and any("libyaml" in path for path in mapped)
    libs = os.path.join(os.path.dirname(eplb.__file__), "_libs")
    assert all(os.path.dirname(path) == libs for path in mapped), mapped


def test_the_readme_example_runs(tmp_path):
    import re

    from conftest import HERE, run_python

    readme = (HERE.parents[1] / "README.md").read_text()
    example = re.search(r"\*\*The Python API\*\*.*?```python\n(.*?)```", readme, re.S).group(1)
    proc = run_python(f"import os; os.chdir({str(tmp_path)!r})\n{example}")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "map.json").exists()
    assert "replica_share" in json.loads((tmp_path / "routed.json").read_text())


@pytest.mark.parametrize("call, message", [
    (lambda: eplb.rebalance_experts(EXAMPLE, 2 ** 31, 4, 2, 8),
     "num_physical_experts = 2147483648 is out of range [1, 1048576]"),
    (lambda: eplb.rebalance_experts(EXAMPLE, 16, 4, 2, -(2 ** 40)),
     "num_ranks = -1099511627776 is out of range [1, 65536]"),
    (lambda: eplb.ExpertMap.from_phy2log(np.array([EXAMPLE_PHY2LOG[0]]), 2 ** 32, 8),
     "num_logical_experts = 4294967296 is out of range [1, 65536]"),
    (lambda: eplb.BalancedOptions(threads=2 ** 33),
     "threads = 8589934592 is out of range [0, 1024]"),
    (lambda: eplb.evaluate(eplb.ExpertMap.from_phy2log(np.array([[0, 1]]), 2, 1), [[1, 1]],
                           previous=np.array([[1, 0]]), bytes_per_expert=2 ** 41),
     "bytes_per_expert = 2199023255552 is out of range [0, 1099511627776]"),
    (lambda: eplb.ExpertMap.read("map.json\0.bak"),
     "path 'map.json\\x00.bak' holds a NUL character"),
])
def test_values_beyond_the_ranges_raise_value_error(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert str(error.value) == message


def test_paths_may_be_path_like(tmp_path):
    m = eplb.ExpertMap.from_phy2log(np.array(EXAMPLE_PHY2LOG), 12, 8)
    m.write(tmp_path / "map.json")
    assert eplb.ExpertMap.read(tmp_path / "map.json") == m
    assert eplb.ExpertMap.read(str(tmp_path / "map.json").encode()) == m


def lcg_load(layers, experts, seed):
    """Non-integer loads from a fixed integer recurrence: the same numbers on every machine."""
    values, x = [], seed
    for _ in range(layers * experts):
        x = (x * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        values.append((x >> 33) % 100000 / 37.0)
    return np.array(values).reshape(layers, experts)


# Hashes of plans of fixed input, the same on every machine and compiler (recorded with g++ 12 on
# an AMD EPYC; earlier versions matched an Intel Xeon with g++ 13 too): a build that plans
# differently (floating-point contraction, another libm, a changed tie rule) fails here. A policy
# change on purpose updates them.
GOLDEN = {
    (58, 256, 8, 4, 32, 288): ["1216d0f6034215df", "aa727a50d76e4b7b", "b2dbf89b032e3200",
                               "6cad6f5ebed3ca33"],
    (58, 256, 8, 18, 144, 288): ["04f3b42ada99bcdb", "ae7a8fb016d09509", "3fa529d566a1a2f1",
                                 "3fa529d566a1a2f1"],
    (94, 128, 1, 2, 16, 144): ["81814ae51bbbd0d3", "ab13f5f247544de3", "9a3a06e999fd730d",
                               "9a3a06e999fd730d"],
    (61, 384, 1, 8, 64, 448): ["a9c0c07c9d9cd657", "e68da30cca3b9d9b", "6e3df10cd1c154fa",
                               "6e3df10cd1c154fa"],
}


@pytest.mark.parametrize("shape", GOLDEN, ids=lambda s: "L{}-E{}-G{}-N{}-R{}-P{}".format(*s))
def test_plans_of_fixed_input_have_the_recorded_hashes(shape):
    layers, experts, groups, nodes, ranks, slots = shape
    load = lcg_load(layers, experts, layers * experts + slots)
    previous = eplb.plan(load[::-1].copy(), slots, ranks, num_groups=groups, num_nodes=nodes)
    options = eplb.BalancedOptions(node_affinity=groups % nodes == 0, threads=4)
    hashes = [eplb.plan(load, slots, ranks, num_groups=groups, num_nodes=nodes, policy=policy,
                        previous=prev, options=opt).hash
              for policy, prev, opt in (("deepseek", None, None), ("balanced", None, None),
                                        ("balanced", previous, None),
                                        ("balanced", previous, options))]
    assert [f"{h:016x}" for h in hashes] == GOLDEN[shape]


def test_when_imported_calls_back_at_once_for_a_module_already_imported():
    from _eplb_startup import when_imported

    seen = []
    when_imported("json", seen.append)
    import json

    assert seen == [json]


def test_sglang_files_hold_every_hidden_layer(tmp_path):
    m = eplb.ExpertMap.from_phy2log(np.array(EXAMPLE_PHY2LOG), 12, 8)
    path = tmp_path / "sglang.json"
    m.write(path, format="sglang", layer_ids="1-2")  # hidden layer 0 is dense
    rows = json.loads(path.read_text())["physical_to_logical_map"]
    assert rows == [[p % 12 for p in range(16)]] + EXAMPLE_PHY2LOG
    assert eplb.ExpertMap.read(path, num_ranks=8, layer_ids=range(1, 3)) == m
    assert eplb.ExpertMap.from_text(m.to_text("sglang", layer_ids=[2, 5], num_hidden_layers=7),
                                    num_ranks=8, layer_ids="2,5", num_hidden_layers=7) == m
    with pytest.raises(ValueError) as error:
        m.write(path, format="sglang", layer_ids="3-60")
    assert str(error.value) == ("the map has 2 MoE layers, but the layer ids name 58 (MoE layers "
                                "3-60 of 61 hidden layers)")
    with pytest.raises(ValueError, match="physical_to_logical_map has 3 rows, but the layer ids "
                                         "name 4 hidden layers"):
        eplb.ExpertMap.read(path, num_ranks=8, layer_ids="2-3")
    with pytest.raises(ValueError, match="layer ids: '3' is not an integer"):
        m.to_text("sglang", layer_ids=["3", 4])
    assert json.loads(path.read_text())["physical_to_logical_map"] == rows  # untouched


def test_gain_per_move_buys_balance_at_its_price():
    # Loads 10, 6, 7, 5 on 2 ranks of 2 slots, previously {0, 1} {2, 3} (busiest 16, best 15,
    # within a 10% tolerance): the swap gains 1 for 2 experts received, worth it below 1 / 28 of
    # the mean rank load (14).
    load = np.array([[10, 6, 7, 5]])
    previous = np.array([[0, 1, 2, 3]])
    kept = eplb.plan(load, 4, 2, previous=previous,
                     options=eplb.BalancedOptions(tolerance=0.1, gain_per_move=0.036))
    assert kept.phy2log.tolist() == [[0, 1, 2, 3]]
    bought = eplb.plan(load, 4, 2, previous=previous,
                       options=eplb.BalancedOptions(tolerance=0.1, gain_per_move=0.0354))
    assert eplb.evaluate(bought, load, previous).experts_received == 2
    assert "gain_per_move=0.0354" in repr(eplb.BalancedOptions(gain_per_move=0.0354))


def test_replica_shares_route_better_are_written_with_the_map_and_evaluated(tmp_path):
    # Expert 0 (load 10) on ranks 0 and 1, expert 1 (load 2) on rank 0: uniform routing loads the
    # ranks 7 and 5; sending 40% of expert 0 to rank 0 loads both 6.
    m = eplb.ExpertMap.from_phy2log(np.array([[0, 1, 0, 1]]), 2, 2)  # rank 0: 0, 1; rank 1: 0, 1
    one_sided = eplb.ExpertMap.from_phy2log(np.array([[0, 1, 0]]), 2, 2)
    load = [[10, 2]]
    shares = eplb.replica_shares(one_sided, load)
    assert shares.shape == (1, 3) and shares.dtype == np.float64
    assert shares.tolist() == [[pytest.approx(0.4), 1.0, pytest.approx(0.6)]]
    e = eplb.evaluate(one_sided, load, replica_shares="optimal")
    assert e.balancedness.tolist() == [pytest.approx(6 / 7)]
    assert e.weighted_balancedness.tolist() == [pytest.approx(1.0)]
    assert e.min_weighted_balancedness == e.mean_weighted_balancedness == pytest.approx(1.0)
    # Given shares: uniform ones give the uniform balance; without shares, no weighted figures.
    uniform = eplb.evaluate(one_sided, load, replica_shares=[[0.5, 1, 0.5]])
    assert uniform.weighted_balancedness.tolist() == [pytest.approx(6 / 7)]
    plain = eplb.evaluate(one_sided, load)
    assert plain.weighted_balancedness is None and plain.mean_weighted_balancedness is None
    assert eplb.evaluate(m, load, replica_shares="optimal").mean_weighted_balancedness == 1.0

    # Written into the eplb format and read back bit for bit; a map without them reads None.
    path = tmp_path / "map.json"
    one_sided.write(str(path), version=4, replica_shares=shares)
    assert json.loads(path.read_text())["replica_share"] == shares.tolist()
    assert eplb.read_replica_shares(str(path)).tolist() == shares.tolist()
    assert eplb.ExpertMap.read(str(path)) == one_sided
    assert '"replica_share"' in one_sided.to_text(replica_shares=shares)
    one_sided.write(str(tmp_path / "plain.json"))
    assert eplb.read_replica_shares(str(tmp_path / "plain.json")) is None


@pytest.mark.parametrize("shares, message", [
    ([[0.5, 1, 0.4]], r"replica_share\[0\]: the shares of expert 0 \(slots 0, 2\) sum to 0\.9, "
                      r"expected 1"),
    ([[0.5, 1.5, 0.5]], r"replica_share\[0\]\[1\] = 1\.5 is out of range \[0, 1\]"),
    ([[0.5, float("nan"), 0.5]], r"replica_share\[0\]\[1\] = nan is out of range \[0, 1\]"),
    ([[0.5, 1]], r"replica_shares has shape \(1, 2\), expected \(1, 3\) as the map"),
    ([0.5, 1, 0.5], r"replica_shares has shape \(3,\), expected 2-D"),
    ([["a", "b", "c"]], r"replica_shares has dtype <U1, expected an integer or floating dtype"),
    ("best", r"replica_shares = 'best' is not \"optimal\" or an array"),
])
def test_bad_replica_shares_raise_and_write_nothing(tmp_path, shares, message):
    m = eplb.ExpertMap.from_phy2log(np.array([[0, 1, 0]]), 2, 2)
    with pytest.raises(ValueError, match=message):
        eplb.evaluate(m, [[10, 2]], replica_shares=shares)
    path = tmp_path / "map.json"
    path.write_text("previous contents")
    with pytest.raises(ValueError):
        m.write(str(path), replica_shares=shares)
    assert path.read_text() == "previous contents"
    assert os.listdir(tmp_path) == ["map.json"]


def test_replica_shares_go_into_the_eplb_format_only(tmp_path):
    m = eplb.ExpertMap.from_phy2log(np.array([[0, 1, 0]]), 2, 2)
    path = tmp_path / "map.json"
    with pytest.raises(ValueError, match="replica shares are carried by the eplb format only, "
                                         "not vllm-ascend"):
        m.write(str(path), format="vllm-ascend", replica_shares=[[0.5, 1, 0.5]])
    with pytest.raises(ValueError, match="is not an array"):  # "optimal" needs a load
        m.to_text(replica_shares="optimal")
    assert not path.exists()
    # A file whose shares do not add up is refused naming the file and the entry.
    m.write(str(path), replica_shares=[[0.5, 1, 0.5]])
    doc = json.loads(path.read_text())
    doc["replica_share"][0][2] = 0.25
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=f"{path}: replica_share\\[0\\]: the shares of expert 0"):
        eplb.read_replica_shares(str(path))
    with pytest.raises(ValueError, match="replica_share"):
        eplb.ExpertMap.read(str(path))
