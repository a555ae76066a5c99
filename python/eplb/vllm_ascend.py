"""eplb's balanced policy inside vllm-ascend's dynamic EPLB, with no change to vllm-ascend.

    EPLB_VLLM_ASCEND_POLICY=balanced vllm serve MODEL --enable-expert-parallel \\
        --additional-config '{"eplb_config": {"dynamic_eplb": true, ...}}'

vLLM loads the `vllm.general_plugins` entry points in every worker process; eplb's,
`register()` below, does nothing unless EPLB_VLLM_ASCEND_POLICY is set. Then, when vllm-ascend
imports its policy factory, `PolicyFactory.generate_policy` returns eplb's policy whatever
`eplb_policy_type` the configuration names (vllm-ascend only accepts its own numbers).
EPLB_BALANCED_OPTIONS (e.g. "max_received_per_rank=2") sets the policy's options.

Written against vllm-ascend 0.11 to 0.27 (the model runner V1's dynamic EPLB):
`vllm_ascend.eplb.core.policy.policy_factory.PolicyFactory.generate_policy(policy_type[, config])`
and policies with

    rebalance_experts(current_expert_table [L, R, S], expert_workload [L, R, S])
        -> (changed, priority, new_table [L, R, S])

where the workload counts tokens per slot. Any other layout or signature is refused with one line
naming the version and what was expected. (Model runner V2 uses vLLM's own policy interface,
which eplb.vllm covers.)

Only `balanced` is offered: vllm-ascend's map checker reverts a layer that puts two replicas of
one expert on one NPU or moves an expert between slots of one NPU; `balanced` never does either
(`deepseek` does both). Per-slot workloads are summed per logical expert; the current table is
the previous placement. `changed` is 1 when the new table differs from the current one;
`priority` lists the layers by how much the busiest rank's load drops, largest first.
"""


import numpy as np

import eplb
from eplb import _engines
from eplb._arrays import as_numpy

FACTORY = "vllm_ascend.eplb.core.policy.policy_factory"
ADAPTER = _engines.Adapter(
    name="eplb.vllm_ascend", engine="vllm-ascend", distribution="vllm-ascend",
    package="vllm_ascend", variable="EPLB_VLLM_ASCEND_POLICY", policies=("balanced",),
    expected=(f"{FACTORY}.PolicyFactory.generate_policy(policy_type[, config]), as in "
              "vllm-ascend 0.11 to 0.27"))


def register():
    """The `vllm.general_plugins` entry point: activates eplb's policy when
    EPLB_VLLM_ASCEND_POLICY is set; with it unset, does nothing."""
    ADAPTER.activate([FACTORY], install)


def install(module, policy="balanced", options=None):
    """Makes vllm-ascend's policy factory return eplb's policy, after checking its signature
    (EngineInterfaceError otherwise)."""
    factory = getattr(module, "PolicyFactory", None)
    generate = getattr(factory, "generate_policy", None)
    if generate is None:
        raise ADAPTER.mismatch(f"has no {FACTORY}.PolicyFactory.generate_policy")
    parameters = _engines.parameter_names(generate)
    if parameters not in (["policy_type"], ["policy_type", "config"]):
        raise ADAPTER.mismatch(f"declares PolicyFactory.generate_policy({', '.join(parameters)})")

    def generate_policy(policy_type, config=None):
        return BalancedAscendPolicy(options)

    factory.generate_policy = staticmethod(generate_policy)
    ADAPTER.installed(policy)


class BalancedAscendPolicy:
    """A vllm-ascend EPLB policy planning with eplb's balanced policy. Picklable (vllm-ascend may
    start its EPLB process with spawn): it holds only the options' keyword arguments."""

    def __init__(self, options=None, config=None):
        self.options = dict(options or {})

    def rebalance_experts(self, current_expert_table, expert_workload):
        table, restore = as_numpy(current_expert_table)
        workload, _ = as_numpy(expert_workload)
        if workload.ndim == 4:  # [stages, L, R, S] (vllm-ascend's multi-stage collection)
            workload = workload.sum(axis=0)
        if table.ndim != 3 or workload.shape != table.shape:
            raise ValueError(f"current_expert_table has shape {table.shape} and expert_workload "
                             f"{workload.shape}; expected both [layers, ranks, slots per rank]")
        num_layers, num_ranks, slots_per_rank = table.shape
        slots = num_ranks * slots_per_rank
        phy2log = table.reshape(num_layers, slots).astype(np.int64)
        num_experts = int(phy2log.max()) + 1
        load = np.zeros((num_layers, num_experts))
        held = phy2log >= 0
        np.add.at(load, (np.nonzero(held)[0], phy2log[held]),
                  workload.reshape(num_layers, slots)[held])
        previous = _engines.usable_previous(phy2log, num_layers, slots, num_experts, num_ranks)
        planned = eplb.plan(load, slots, num_ranks, policy="balanced", previous=previous,
                            options=eplb.BalancedOptions(**self.options) if self.options else None)
        new_table = planned.phy2log
        gain = (_max_rank_load(phy2log, load, num_ranks) if previous is not None else
                np.full(num_layers, np.inf)) - _max_rank_load(new_table, load, num_ranks)
        priority = np.argsort(-gain, kind="stable").astype(np.int64)
        changed = int(not np.array_equal(new_table, phy2log))
        return changed, priority, restore(new_table.reshape(num_layers, num_ranks, slots_per_rank))


def _max_rank_load(phy2log, load, num_ranks):
    """The busiest rank's load per layer: an expert's load splits evenly over its replicas."""
    num_layers, slots = phy2log.shape
    rows = np.arange(num_layers)[:, None]
    replicas = np.zeros_like(load)
    np.add.at(replicas, (np.broadcast_to(rows, phy2log.shape), phy2log), 1)
    per_slot = load[rows, phy2log] / replicas[rows, phy2log]
    return per_slot.reshape(num_layers, num_ranks, slots // num_ranks).sum(axis=2).max(axis=1)
