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

Remote mode (EPLB_SGLANG_PLANNER=HOST:PORT, EPLB_DEPLOYMENT=NAME; see eplb.remote for the other
variables): the replacement of `rebalance_experts` plans nothing. At SGLang's rebalance (every
--eplb-rebalance-num-iterations passes, in every scheduler at once) it
- starts remote mode the first time (a collective over torch.distributed's ranks, which must be
  the EP group: EP rank 0 creates the deployment from the shape, with a row per hidden layer);
- reports SGLang's counts, which SGLang has summed over the ranks: each rank reports 1/R of them,
  as covering the passes of the window, so the planner's total is the true one;
- agrees with the other ranks on the newest committed plan all of them hold, and returns it (or
  the current map when there is none; SGLang then moves nothing).
EPLBManager.rebalance is wrapped to acknowledge the version ACTIVE once it has moved the weights.
"""

import importlib
import inspect

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
    """Called when a process imports sglang with EPLB_SGLANG_PLANNER (remote mode) or
    EPLB_SGLANG_POLICY set: checks SGLang's layout and patches its algorithm module when SGLang
    imports it."""
    from eplb.remote import RemoteConfig

    policy = _engines.policy_from_env(ADAPTER.variable, ADAPTER.policies) or ""
    config = RemoteConfig.from_env(PLANNER_VARIABLE, policy=policy)
    if config is None:
        ADAPTER.activate(MODULES, install)
        return
    present = [name for name in MODULES
               if _engines.package_has("sglang", name[len("sglang."):].replace(".", "/"))]
    if not present:
        raise ADAPTER.mismatch(f"has neither {' nor '.join(MODULES)}")
    for name in present:
        _engines.when_imported(name, lambda module: install_remote(module, config))
        manager = name.rsplit(".", 1)[0] + ".eplb_manager"
        _engines.when_imported(manager, _wrap_manager)


def install(module, policy, options=None):
    """Replaces `module.rebalance_experts` with eplb's `policy`, after checking its signature
    (EngineInterfaceError otherwise)."""
    checked = _algorithm(module)
    if checked is None:
        return  # installed already
    original, location_module = checked

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


def _algorithm(module):
    """(SGLang's rebalance_experts, its expert_location module's name) after checking the
    signature (EngineInterfaceError otherwise); None when eplb's replacement is installed already."""
    original = getattr(module, "rebalance_experts", None)
    if getattr(original, "eplb_policy", None) is not None:
        return None
    if original is None:
        raise ADAPTER.mismatch(f"has no {module.__name__}.rebalance_experts")
    parameters = _engines.parameter_names(original)
    if parameters != _PARAMETERS:
        raise ADAPTER.mismatch(
            f"declares {module.__name__}.rebalance_experts({', '.join(parameters)})")
    return original, module.__name__.rsplit(".", 1)[0] + ".expert_location"


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


# ---- Remote mode ---------------------------------------------------------------------------------

PLANNER_VARIABLE = "EPLB_SGLANG_PLANNER"


class _Remote:
    """The scheduler process's remote-mode state: the RemoteBalancer (made at the first rebalance,
    a collective of every rank) and the version handed to SGLang, acknowledged once applied."""

    def __init__(self, config):
        self.config = config
        self.balancer = None
        self.applying = None

    def plan(self, tokens_per_expert, num_physical_experts, num_local_physical_experts,
             num_groups, num_nodes, location_module):
        import torch
        import torch.distributed as dist

        from eplb.remote import RemoteBalancer

        tokens = torch.as_tensor(tokens_per_expert)
        steps = tokens.shape[0] if tokens.dim() == 3 else 1
        if tokens.dim() == 3:
            tokens = tokens.sum(dim=0, dtype=torch.int64)
        num_layers, num_experts = tokens.shape
        if num_local_physical_experts < 1 or num_physical_experts % num_local_physical_experts:
            raise ValueError(f"num_physical_experts = {num_physical_experts} is not a multiple "
                             f"of num_local_physical_experts = {num_local_physical_experts}")
        num_ranks = num_physical_experts // num_local_physical_experts
        if self.applying is not None:  # applied since (SGLang without an EPLBManager to wrap)
            self.acknowledge()
        if self.balancer is None:
            if dist.get_world_size() != num_ranks:
                raise ADAPTER.mismatch(f"runs {dist.get_world_size()} ranks for an EP size of "
                                       f"{num_ranks}; remote mode needs one EP group over every "
                                       "rank")
            num_groups = num_groups or 1
            current = _engines.usable_previous(_current_map(location_module), num_layers,
                                               num_physical_experts, num_experts, num_ranks)
            self.balancer = RemoteBalancer(
                self.config, rank=dist.get_rank(), num_ranks=num_ranks, num_layers=num_layers,
                num_logical_experts=num_experts, num_physical_experts=num_physical_experts,
                num_groups=num_groups, num_nodes=num_nodes if num_groups % num_nodes == 0 else 1,
                initial_map=current)
        # SGLang's counts are summed over the ranks already: each rank reports its share.
        self.balancer.record_window(tokens.cpu().double() / num_ranks, steps)
        agreed = self.balancer.agree()
        if agreed is not None:
            self.applying, expert_map = agreed
        else:
            current = _current_map(location_module)
            expert_map = _engines.usable_previous(current, num_layers, num_physical_experts,
                                                  num_experts, num_ranks)
            if expert_map is None:
                expert_map = eplb.ExpertMap.from_phy2log(
                    np.tile(np.arange(num_physical_experts) % num_experts, (num_layers, 1)),
                    num_experts, num_ranks)
        return (torch.from_numpy(expert_map.phy2log), torch.from_numpy(expert_map.log2phy),
                torch.from_numpy(expert_map.logcnt))

    def acknowledge(self):
        version, self.applying = self.applying, None
        if version is not None and self.balancer is not None:
            self.balancer.applied(version)


_remote = None


def install_remote(module, config):
    """Replaces `module.rebalance_experts` (signature checked) with the plan the EP ranks agree on;
    SGLang's counts are reported to the planner on the way."""
    global _remote
    checked = _algorithm(module)
    if checked is None:
        return  # installed already
    _, location_module = checked
    _remote = _Remote(config)

    def rebalance_experts(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                          num_groups, num_nodes, algorithm=None, **kwargs):
        return _remote.plan(tokens_per_expert, num_physical_experts, num_local_physical_experts,
                            num_groups, num_nodes, location_module)

    rebalance_experts.__doc__ = "The plan SGLang's EP ranks agreed on (eplb.sglang remote mode)."
    rebalance_experts.eplb_policy = "remote"
    module.rebalance_experts = rebalance_experts
    _engines.logger.info("eplb: SGLang %s plans EPLB with eplb-planner's plans (%s, %s)",
                         ADAPTER.version(), config.planner, config.deployment)


def _wrap_manager(module):
    """Acknowledges a plan once EPLBManager.rebalance (which moves the weights) has finished."""
    manager = getattr(module, "EPLBManager", None)
    original = getattr(manager, "rebalance", None)
    if original is None or getattr(original, "eplb_remote", False):
        return  # without it, the next rebalance acknowledges

    if inspect.isgeneratorfunction(original):
        def rebalance(self, *args, **kwargs):
            yield from original(self, *args, **kwargs)
            if _remote is not None:
                _remote.acknowledge()
    else:
        def rebalance(self, *args, **kwargs):
            result = original(self, *args, **kwargs)
            if _remote is not None:
                _remote.acknowledge()
            return result

    rebalance.eplb_remote = True
    manager.rebalance = rebalance
