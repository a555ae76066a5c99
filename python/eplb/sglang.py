"""eplb's placement policies inside SGLang, with no change to SGLang.

    EPLB_SGLANG_POLICY=balanced python -m sglang.launch_server ... --enable-eplb ...

SGLang plans in its scheduler processes, which it spawns: a patch made in the launcher would not
reach them. The package installs `eplb_engines.pth`, which runs at every interpreter start and,
only when EPLB_SGLANG_POLICY is set, arranges for `activate()` to run as soon as the process
imports `sglang`. That checks SGLang's layout and, when SGLang imports its algorithm module,
replaces the module's `rebalance_experts` (SGLang looks it up on the module at every call).
The variable chooses the policy (`balanced` or `deepseek`) in place of SGLang's deepseek
algorithms, whichever of them --eplb-algorithm picks; an algorithm of another kind
(elasticity_aware, for elastic EP, plans on the ranks still alive) still plans, with a warning on
the `eplb` logger. EPLB_BALANCED_OPTIONS (e.g. "tolerance=0.02") sets the balanced policy's
options.

Written against SGLang 0.4.7 to 0.5.x: `sglang.srt.eplb.eplb_algorithms` (0.4.9 and later) or
`sglang.srt.managers.eplb_algorithms` (0.4.7, 0.4.8), with

    rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                      num_groups, num_nodes, algorithm) -> (phy2log, log2phy, expert_count)

Any other layout or signature is refused with one line naming the SGLang version and what was
expected (the import of the module fails with it), never ignored.

What eplb's replacement does with SGLang's arguments:
- `tokens_per_expert` [steps, L, E] (or [L, E]; any device) is summed over steps as int64 on its
  device, then read on the CPU. SGLang numbers rows by hidden layer (61 for DeepSeek-V3); the
  dense layers' rows count no tokens.
- The previous placement is SGLang's current map (`get_global_expert_location_metadata()`),
  used when it is a valid [L, P] map; experts that stay keep their slot.
- Rows that count no tokens (dense layers, or MoE layers that saw no traffic) have nothing to
  balance: they keep the current map's row, or get the trivial row `arange(P) % E` when there is
  no current map, as SGLang initialises it. The other rows are planned together.
- Returns CPU int64 tensors: phy2log [L, P], log2phy [L, E, P - E + 1] (each expert's slots in
  slot order, then -1) and expert_count [L, E]. num_physical_experts must be a multiple of
  num_local_physical_experts (the slots of one rank).
- num_groups None (models without expert groups) is one group.
Every rank plans independently from the same all-reduced counts and gets the same map.
"""

import importlib

import numpy as np

import eplb
from eplb import _engines

MODULES = ["sglang.srt.eplb.eplb_algorithms", "sglang.srt.managers.eplb_algorithms"]
_PARAMETERS = ["tokens_per_expert", "num_physical_experts", "num_local_physical_experts",
               "num_groups", "num_nodes", "algorithm"]
ADAPTER = _engines.Adapter(
    name="eplb.sglang", engine="SGLang", distribution="sglang", package="sglang",
    variable="EPLB_SGLANG_POLICY", policies=("balanced", "deepseek"),
    expected=(f"{' or '.join(MODULES)} with rebalance_experts({', '.join(_PARAMETERS)}), "
              "as in SGLang 0.4.7 to 0.5.x"))


def activate():
    """Called when a process imports sglang with EPLB_SGLANG_POLICY set: checks SGLang's layout and
    patches its algorithm module when SGLang imports it."""
    ADAPTER.activate(MODULES, install)


def install(module, policy, options=None):
    """Replaces `module.rebalance_experts` with eplb's `policy`, after checking its signature
    (EngineInterfaceError otherwise)."""
    original = getattr(module, "rebalance_experts", None)
    if getattr(original, "eplb_policy", None) is not None:
        return  # installed already
    if original is None:
        raise ADAPTER.mismatch(f"has no {module.__name__}.rebalance_experts")
    parameters = _engines.parameter_names(original)
    if parameters != _PARAMETERS:
        raise ADAPTER.mismatch(
            f"declares {module.__name__}.rebalance_experts({', '.join(parameters)})")
    location_module = module.__name__.rsplit(".", 1)[0] + ".expert_location"

    def rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                          num_groups, num_nodes, algorithm=None, **kwargs):
        name = getattr(algorithm, "name", "deepseek")
        if not name.startswith("deepseek"):
            # Elastic EP (elasticity_aware) plans on the ranks still alive, which eplb's policies
            # do not model: SGLang's own algorithm plans, and the log says so each time.
            _engines.logger.warning("eplb: SGLang's %s algorithm plans this rebalance; eplb's "
                                    "policies replace only the deepseek ones", name)
            return original(tokens_per_expert=tokens_per_expert,
                            num_physical_experts=num_physical_experts,
                            num_local_physical_experts=num_local_physical_experts,
                            num_groups=num_groups, num_nodes=num_nodes, algorithm=algorithm,
                            **kwargs)
        current = _current_map(location_module)
        return rebalance(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                         num_groups, num_nodes, current, policy=policy, options=options)

    rebalance_experts.__doc__ = f"eplb's {policy} policy in place of SGLang's deepseek algorithms."
    rebalance_experts.eplb_policy = policy
    module.rebalance_experts = rebalance_experts
    ADAPTER.installed(policy)


def _current_map(location_module):
    """SGLang's current physical-to-logical map [L, P], or None (at start-up there is none)."""
    try:
        metadata = importlib.import_module(location_module).get_global_expert_location_metadata()
    except Exception as error:  # noqa: BLE001 (a version without it: plan without a previous map)
        _engines.logger.info("eplb: no current SGLang expert map: %s", error)
        return None
    if metadata is None:
        return None
    current = getattr(metadata, "physical_to_logical_map_cpu", None)
    return current if current is not None else getattr(metadata, "physical_to_logical_map", None)


def rebalance(tokens_per_expert, num_physical_experts, num_local_physical_experts, num_groups,
              num_nodes, current=None, *, policy="balanced", options=None):
    """SGLang's rebalance_experts with eplb's policy (see the module documentation)."""
    import torch

    tokens = torch.as_tensor(tokens_per_expert)
    if tokens.dim() == 3:
        tokens = tokens.sum(dim=0, dtype=torch.int64)
    if tokens.dim() != 2:
        raise ValueError(f"tokens_per_expert has shape {tuple(tokens.shape)}, "
                         "expected [steps, layers, experts] or [layers, experts]")
    load = tokens.cpu().numpy()
    num_layers, num_experts = load.shape
    slots = num_physical_experts
    if num_local_physical_experts < 1 or slots % num_local_physical_experts != 0:
        raise ValueError(f"num_physical_experts = {slots} is not a multiple of "
                         f"num_local_physical_experts = {num_local_physical_experts}")
    num_ranks = slots // num_local_physical_experts
    previous = _engines.usable_previous(current, num_layers, slots, num_experts, num_ranks)
    phy2log = (previous.phy2log if previous is not None else
               np.tile(np.arange(slots, dtype=np.int64) % num_experts, (num_layers, 1)))
    active = load.any(axis=1)
    if active.any():
        planned = eplb.plan(
            load[active], slots, num_ranks, num_groups=num_groups or 1, num_nodes=num_nodes,
            policy=policy, previous=phy2log[active] if previous is not None else None,
            options=eplb.BalancedOptions(**options) if options else None)
        phy2log[active] = planned.phy2log
    result = eplb.ExpertMap.from_phy2log(phy2log, num_experts, num_ranks)
    return (torch.from_numpy(result.phy2log), torch.from_numpy(result.log2phy),
            torch.from_numpy(result.logcnt))
