"""policy="deepseek", tables=True equals the reference algorithm (tests/support/reference_eplb.py,
a torch transcription of REFERENCE-ALGORITHM.md) bit for bit on integer loads."""
import numpy as np
import pytest
import torch

import eplb
import reference_eplb
from test_api import EXAMPLE, EXAMPLE_PHY2LOG


def assert_same_as_reference(weight, num_replicas, num_groups, num_nodes, num_ranks):
    expected = reference_eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes,
                                                num_ranks)
    actual = eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks,
                                    policy="deepseek", tables=True)
    for name, e, a in zip(("phy2log", "log2phy", "logcnt"), expected, actual):
        assert a.dtype == torch.int64, name
        assert torch.equal(a, e), f"{name} differs at {(a != e).nonzero()[:5].tolist()}"


def test_reference_transcription_reproduces_the_published_example():
    phy2log, _, _ = reference_eplb.rebalance_experts(torch.tensor(EXAMPLE), 16, 4, 2, 8)
    assert phy2log.tolist() == EXAMPLE_PHY2LOG
    assert_same_as_reference(torch.tensor(EXAMPLE), 16, 4, 2, 8)


# (L, E, G, N, R, P, load): random shapes covering hierarchical and global plans (G % N != 0),
# one and many slots per rank, one group per node, ties, zero layers and E = 384.
SHAPES = [
    (4, 16, 4, 2, 4, 16, "lognormal"),      # no redundant slot
    (4, 16, 4, 2, 4, 20, "lognormal"),
    (3, 16, 4, 4, 8, 24, "lognormal"),      # one group per node
    (3, 16, 8, 2, 8, 32, "ties"),
    (2, 32, 8, 4, 8, 40, "ties"),
    (2, 32, 8, 4, 16, 48, "lognormal"),
    (2, 32, 8, 3, 6, 36, "lognormal"),      # G % N != 0: the global policy
    (3, 24, 6, 4, 8, 32, "ties"),           # G % N != 0
    (2, 64, 8, 2, 16, 80, "zero-layer"),
    (2, 64, 1, 1, 8, 72, "lognormal"),      # one group
    (2, 64, 64, 8, 8, 64, "lognormal"),     # one expert per group
    (3, 64, 8, 8, 32, 96, "ties"),
    (1, 64, 8, 1, 64, 128, "lognormal"),    # two slots per rank, one node
    (2, 128, 16, 4, 16, 160, "zero-layer"),
    (2, 128, 8, 16, 32, 192, "lognormal"),  # G < N
    (2, 256, 8, 4, 32, 288, "lognormal"),   # DeepSeek-V3 prefill
    (1, 256, 8, 18, 144, 288, "lognormal"),  # DeepSeek-V3 decode (global)
    (2, 256, 8, 4, 32, 288, "ties"),
    (2, 384, 1, 1, 64, 448, "lognormal"),   # Kimi-K2
    (2, 384, 8, 8, 64, 512, "ties"),        # E = 384, hierarchical
    (2, 384, 12, 6, 48, 432, "zero-layer"),
    (2, 128, 4, 4, 16, 128, "all-equal"),   # every load tied
    (1, 12, 4, 2, 8, 16, "all-zero"),
]


def make_load(kind, num_layers, num_experts, rng):
    if kind == "ties":  # a handful of values: many equal loads, equal group sums and quotients
        return torch.from_numpy(rng.integers(0, 4, size=(num_layers, num_experts)) * 60)
    if kind == "all-equal":
        return torch.full((num_layers, num_experts), 7, dtype=torch.int64)
    if kind == "all-zero":
        return torch.zeros((num_layers, num_experts), dtype=torch.int64)
    load = torch.from_numpy(np.round(rng.lognormal(0, 1.5, size=(num_layers, num_experts)) * 500))
    if kind == "zero-layer":
        load[0] = 0
    return load.to(torch.int64)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "L{}-E{}-G{}-N{}-R{}-P{}-{}".format(*s))
def test_deepseek_equals_the_reference(shape):
    num_layers, num_experts, num_groups, num_nodes, num_ranks, num_replicas, kind = shape
    rng = np.random.default_rng(num_experts * 1000 + num_replicas)
    load = make_load(kind, num_layers, num_experts, rng)
    assert_same_as_reference(load, num_replicas, num_groups, num_nodes, num_ranks)
