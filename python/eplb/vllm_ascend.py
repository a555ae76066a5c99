"""eplb's balanced policy inside vllm-ascend's dynamic EPLB, with no change to vllm-ascend.

    EPLB_VLLM_ASCEND_POLICY=balanced vllm serve MODEL --enable-expert-parallel \\
        --additional-config '{"eplb_config": {"dynamic_eplb": true, ...}}'

vLLM loads the `vllm.general_plugins` entry points in every worker process; eplb's
(`_eplb_startup.vllm_ascend_plugin`, which calls `register()` below) does nothing unless
EPLB_VLLM_ASCEND_POLICY is set. Then, when vllm-ascend imports its policy factory,
`PolicyFactory.generate_policy` returns eplb's policy whatever `eplb_policy_type` the
configuration names (vllm-ascend only accepts its own numbers).
EPLB_BALANCED_OPTIONS (e.g. "max_received_per_rank=2") sets the policy's options.

Written against vllm-ascend 0.11 to 0.27 (the model runner V1's dynamic EPLB):
`vllm_ascend.eplb.core.policy.policy_factory.PolicyFactory.generate_policy(policy_type[, config])`
and policies with

    rebalance_experts(current_expert_table [L, R, S], expert_workload [L, R, S])
        -> (changed, priority, new_table [L, R, S])

where the workload counts tokens per slot. Any other layout or signature is refused with one line
naming the version and what was expected. Model runner V2 (VLLM_USE_V2_MODEL_RUNNER=1) builds
its policy with its own factory (`create_eplb_policy`), which this adapter does not reach.

Only `balanced` is offered: vllm-ascend's map checker reverts a layer that puts two replicas of
one expert on one NPU or moves an expert between slots of one NPU; `balanced` never does either
(`deepseek` does both). Per-slot workloads are summed per logical expert; the current table is
the previous placement. `changed` is 1 when the new table differs from the current one;
`priority` lists the layers by how much the busiest rank's load drops, largest first. Elastic
scaling (`set_new_ep_size(n)`): the next plan is made fresh for n ranks of S slots each.
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
    start its EPLB process with spawn): it holds only plain values."""

    def __init__(self, options=None, config=None):
        self.options = dict(options or {})
        self.num_ranks = None  # set by elastic scaling

    def set_new_ep_size(self, ep_size):
        """Elastic scaling: plan for `ep_size` ranks from now on."""
        if int(ep_size) < 1:
            raise ValueError(f"ep_size = {ep_size} is out of range [1, ...]")
        self.num_ranks = int(ep_size)

    def rebalance_experts(self, current_expert_table, expert_workload):
        table, restore = as_numpy(current_expert_table)
        workload, _ = as_numpy(expert_workload)
        if workload.ndim == 4:  # [stages, L, R, S] (vllm-ascend's multi-stage collection)
            workload = workload.sum(axis=0)
        if table.ndim != 3 or workload.shape != table.shape:
            raise ValueError(f"current_expert_table has shape {table.shape} and expert_workload "
                             f"{workload.shape}; expected both [layers, ranks, slots per rank]")
        num_layers, num_ranks, slots_per_rank = table.shape
        phy2log = table.reshape(num_layers, -1).astype(np.int64)
        num_experts = int(phy2log.max()) + 1
        load = np.zeros((num_layers, num_experts))
        held = phy2log >= 0
        np.add.at(load, (np.nonzero(held)[0], phy2log[held]),
                  workload.reshape(num_layers, -1)[held])
        new_ranks = self.num_ranks or num_ranks
        previous = (_engines.usable_previous(phy2log, num_layers, phy2log.shape[1], num_experts,
                                             num_ranks) if new_ranks == num_ranks else None)
        options = eplb.BalancedOptions(**self.options) if self.options else None
        planned = eplb.plan(load, new_ranks * slots_per_rank, new_ranks, previous=previous,
                            options=options)
        # The gain of a layer: how much its busiest rank's load drops (the busiest rank carries
        # the mean rank load over the balancedness).
        busiest = load.sum(axis=1) / new_ranks / eplb.evaluate(planned, load).balancedness
        gain = (load.sum(axis=1) / num_ranks / eplb.evaluate(previous, load).balancedness
                - busiest) if previous is not None else np.full(num_layers, np.inf)
        priority = np.argsort(-gain, kind="stable").astype(np.int64)
        new_table = planned.phy2log.reshape(num_layers, new_ranks, slots_per_rank)
        changed = int(new_table.shape != table.shape or not np.array_equal(new_table, table))
        return changed, priority, restore(new_table)
