"""eplb's placement policies inside vLLM, with no change to vLLM.

    EPLB_VLLM_POLICY=balanced vllm serve MODEL --enable-expert-parallel --enable-eplb ...

vLLM loads the `vllm.general_plugins` entry points in every process it starts; eplb's
(`_eplb_startup.vllm_plugin`, which calls `register()` below) does nothing unless EPLB_VLLM_POLICY
is set. With `balanced` or `deepseek`, when
vLLM imports `vllm.distributed.eplb.policy`, the policy class registered there under "default"
(the only name vLLM's configuration accepts, and the only one allowed with async EPLB) is replaced
by eplb's. EPLB_BALANCED_OPTIONS (e.g. "tolerance=0.02,max_received_per_rank=2") sets the
balanced policy's options.

Written against vLLM 0.13 to 0.32, whose policy classes have the class method

    rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks
                      [, old_global_expert_indices=None])

returning (phy2log, log2phy, logcnt) up to vLLM 0.18 and phy2log alone from 0.19 (vLLM then
rebuilds log2phy and logcnt from phy2log in slot order). The form is read from the installed
vLLM's AbstractEplbPolicy; any other interface (vLLM 0.12 and older have no policy classes) is
refused at start-up with one line naming the vLLM version and what was expected, never ignored.

What eplb's policy does with vLLM's arguments: `weight` [L, E] (any device) is read on the CPU,
and every table it returns is a CPU int64 tensor (vLLM's async path requires the CPU). The old map
`old_global_expert_indices` [L, P] is the previous placement of `balanced` (experts that stay keep
their slot), unless it holds -1 (slots of new ranks after an elastic scale-up) or has another
width (a scale-down): it is then ignored and the plan is made fresh. vLLM gives every rank P / R
slots, so P % R != 0 is refused. Every rank plans independently from the same all-reduced load and
gets the same map (eplb's plans do not depend on threads, timing or machine).
"""

import importlib
import inspect
import typing

import eplb
from eplb import _engines

MODULE = "vllm.distributed.eplb.policy"
_PARAMETERS = ["weight", "num_replicas", "num_groups", "num_nodes", "num_ranks"]
ADAPTER = _engines.Adapter(
    name="eplb.vllm", engine="vLLM", distribution="vllm", package="vllm",
    variable="EPLB_VLLM_POLICY", policies=("balanced", "deepseek"),
    expected=(f"{MODULE}.EPLB_POLICIES and AbstractEplbPolicy.rebalance_experts("
              f"{', '.join(_PARAMETERS)}[, old_global_expert_indices]) returning phy2log or "
              "(phy2log, log2phy, logcnt), as in vLLM 0.13 to 0.32"))


def register():
    """The `vllm.general_plugins` entry point: activates eplb's policy when EPLB_VLLM_POLICY is
    set; with it unset, does nothing."""
    ADAPTER.activate([MODULE], install)


def _returns_three_tables(method):
    """True for (phy2log, log2phy, logcnt), False for phy2log alone, None for anything else."""
    import torch

    try:
        returns = inspect.signature(method, eval_str=True).return_annotation
    except Exception:  # noqa: BLE001 (an annotation that does not evaluate: an unknown interface)
        return None
    if returns is torch.Tensor:
        return False
    if typing.get_origin(returns) is tuple and typing.get_args(returns) == (torch.Tensor,) * 3:
        return True
    return None


def _interface(module):
    """(AbstractEplbPolicy, whether its rebalance_experts returns three tables) of vLLM's policy
    module; EngineInterfaceError unless it is the interface this adapter was written for."""
    base = getattr(module, "AbstractEplbPolicy", None)
    method = getattr(base, "rebalance_experts", None)
    if method is None:
        raise ADAPTER.mismatch(f"has no AbstractEplbPolicy.rebalance_experts in {MODULE}")
    parameters = _engines.parameter_names(method)
    if parameters not in (_PARAMETERS, _PARAMETERS + ["old_global_expert_indices"]):
        raise ADAPTER.mismatch(
            f"declares AbstractEplbPolicy.rebalance_experts({', '.join(parameters)})")
    three_tables = _returns_three_tables(method)
    if three_tables is None:
        returns = inspect.signature(method).return_annotation
        raise ADAPTER.mismatch(f"declares AbstractEplbPolicy.rebalance_experts(...) -> {returns}")
    return base, three_tables


_CLASS_NAMES = {"balanced": "EplbBalancedPolicy", "deepseek": "EplbDeepseekPolicy"}
_classes = {}


def policy_class(policy, options=None):
    """eplb's `policy` as a policy class of the installed vLLM: a subclass of its
    AbstractEplbPolicy, made once per process (later calls return it, whatever `options`).
    It is also reachable as eplb.vllm.EplbBalancedPolicy / EplbDeepseekPolicy, so that pickle
    finds it in a process that loaded no plugin; it then takes its options from
    EPLB_BALANCED_OPTIONS."""
    name = _CLASS_NAMES[policy]
    if name not in _classes:
        base, three_tables = _interface(importlib.import_module(MODULE))

        def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                              old_global_expert_indices=None):
            return rebalance(weight, num_replicas, num_groups, num_nodes, num_ranks,
                             old_global_expert_indices, policy=policy, options=options,
                             three_tables=three_tables)

        _classes[name] = type(name, (base,), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"eplb's {policy} policy (eplb.vllm).",
            "rebalance_experts": classmethod(rebalance_experts)})
    return _classes[name]


def __getattr__(name):
    for policy, class_name in _CLASS_NAMES.items():
        if name == class_name:
            return policy_class(policy, _engines.options_from_env(policy))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def install(module, policy, options=None):
    """Registers eplb's `policy` under "default" in vLLM's policy module, after checking that the
    module has the interface this adapter was written for (EngineInterfaceError otherwise)."""
    registry = getattr(module, "EPLB_POLICIES", None)
    if not isinstance(registry, dict) or "default" not in registry:
        raise ADAPTER.mismatch(f'has no EPLB_POLICIES["default"] in {MODULE}')
    registry["default"] = policy_class(policy, options)
    ADAPTER.installed(policy)


def rebalance(weight, num_replicas, num_groups, num_nodes, num_ranks, old_map=None, *,
              policy="balanced", options=None, three_tables=False):
    """What eplb's policy class returns to vLLM (see the module documentation)."""
    if num_replicas % num_ranks != 0:
        raise ValueError(f"num_replicas = {num_replicas} is not a multiple of num_ranks = "
                         f"{num_ranks}: vLLM gives every rank the same number of slots")
    weight = weight.detach().cpu()
    num_layers, num_experts = weight.shape
    previous = _engines.usable_previous(old_map, num_layers, num_replicas, num_experts, num_ranks)
    return eplb.rebalance_experts(
        weight, num_replicas, num_groups, num_nodes, num_ranks, policy=policy,
        previous=previous, options=eplb.BalancedOptions(**options) if options else None,
        tables=three_tables)
