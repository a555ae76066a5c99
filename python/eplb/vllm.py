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

Remote mode (EPLB_VLLM_PLANNER=HOST:PORT, EPLB_DEPLOYMENT=NAME; see eplb.remote for the other
variables): the ranks stop planning. The adapter wraps EplbState.step (vLLM 0.13+: step(is_dummy,
is_profile, log_stats) over model_states, with expert_rearrangement_step and
expert_rearrangement_step_interval):
- the first step that is not a profile run starts remote mode on every rank (a collective: EP rank
  0 creates the deployment from the main model's shape, every rank checks it; one EP group over
  every rank is required);
- each step that is not a dummy adds the main model's expert_load_pass (counts per slot, before
  vLLM zeroes it) through the current physical_to_logical_map into a sum on its device; every
  EPLB_REPORT_EVERY_STEPS steps the sum goes to the planner in the background;
- on the step where vLLM's counter reaches the interval (and no asynchronous rearrangement is still
  moving weights), the ranks agree on the newest committed plan all of them hold, on the serving
  thread; the policy class registered under "default" then returns that plan's phy2log (or the map
  in use, when there is none), wherever vLLM calls it;
- once no model state is moving weights any more, the rank acknowledges the version ACTIVE.
A model of another shape (a drafter) is planned locally with `balanced`. shutdown() (also run at
exit) reports what was recorded since the last report.
"""

import atexit
import importlib
import inspect
import threading
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
    """The `vllm.general_plugins` entry point: remote mode when EPLB_VLLM_PLANNER is set, else
    eplb's policy when EPLB_VLLM_POLICY is set; with neither, does nothing."""
    config = _remote_config()
    if config is None:
        ADAPTER.activate([MODULE], install)
        return
    for name in (MODULE, STATE_MODULE):
        if not _engines.package_has("vllm", name[len("vllm."):].replace(".", "/")):
            raise ADAPTER.mismatch(f"has no {name}")
    _engines.when_imported(STATE_MODULE, lambda module: install_remote(module, config))
    _engines.when_imported(MODULE, install_remote_policy)


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


# ---- Remote mode ---------------------------------------------------------------------------------

PLANNER_VARIABLE = "EPLB_VLLM_PLANNER"
STATE_MODULE = "vllm.distributed.eplb.eplb_state"


def _remote_config():
    from eplb.remote import RemoteConfig

    policy = _engines.policy_from_env(ADAPTER.variable, ADAPTER.policies) or ""
    return RemoteConfig.from_env(PLANNER_VARIABLE, policy=policy)


class _Remote:
    """The process's remote-mode state: one RemoteBalancer for the main model's EplbModelState,
    the plan agreed at the last rebalance point (for the policy call, which may run on vLLM's
    async thread) and the version waiting to be acknowledged once vLLM applied it."""

    def __init__(self, config):
        self.config = config
        self.balancer = None
        self.lock = threading.Lock()
        self.agreed = None   # (version, ExpertMap) for the next policy call
        self.applying = None  # the version handed to vLLM, acknowledged once applied
        self.current = None  # the main model's physical_to_logical_map (vLLM's tensor)
        self.model_state = None  # the main model's EplbModelState, once started

    def start(self, state, model_state):
        import torch.distributed as dist

        from eplb.remote import RemoteBalancer
        from vllm.distributed import parallel_state

        ep = parallel_state.get_ep_group()
        if ep.world_size != dist.get_world_size():
            raise ADAPTER.mismatch(
                f"runs an EP group of {ep.world_size} of {dist.get_world_size()} ranks; remote "
                "mode needs one EP group over every rank (pipeline parallel size 1)")
        phy2log = model_state.physical_to_logical_map
        num_layers, num_slots = phy2log.shape
        num_experts = model_state.logical_replica_count.shape[1]
        num_groups = getattr(model_state.model, "num_expert_groups", 1) or 1
        get_node_count = getattr(parallel_state, "get_node_count", None)
        num_nodes = get_node_count() if get_node_count is not None else 1
        if num_groups % num_nodes != 0:
            num_nodes = 1  # as vLLM plans then
        initial = _engines.usable_previous(phy2log.cpu(), num_layers, num_slots, num_experts,
                                           ep.world_size)
        self.balancer = RemoteBalancer(
            self.config, rank=ep.rank_in_group, num_ranks=ep.world_size, num_layers=num_layers,
            num_logical_experts=num_experts, num_physical_experts=num_slots,
            num_groups=num_groups, num_nodes=num_nodes, initial_map=initial)
        _engines.logger.info("eplb: vLLM %s reports EP rank %d of %d to %s (deployment %s)",
                             ADAPTER.version(), ep.rank_in_group, ep.world_size,
                             self.config.planner, self.config.deployment)

    def begin(self, state):
        """The first step: starts remote mode (a collective of every rank)."""
        for name in ("expert_rearrangement_step", "expert_rearrangement_step_interval"):
            if not hasattr(state, name):
                raise ADAPTER.mismatch(f"has an EplbState without {name}")
        model_state = _main_model_state(state)
        self.start(state, model_state)
        self.model_state = model_state
        self.current = model_state.physical_to_logical_map
        atexit.register(self.close)

    def rebalance_point(self, state):
        """vLLM rearranges in this step (unless an asynchronous rearrangement is still moving
        weights): the ranks agree here, on the serving thread, and the policy call (maybe on
        vLLM's async thread) only hands the agreed plan over."""
        if _moving(state):
            return
        agreed = self.balancer.agree()
        with self.lock:
            self.agreed = agreed

    def after_step(self, state):
        with self.lock:
            version = self.applying
        if version is not None and not _moving(state):
            with self.lock:
                self.applying = None
            self.balancer.applied(version)

    def close(self, timeout=5.0):
        """Reports what was recorded and stops the balancer (at exit)."""
        if self.balancer is None or self.balancer.closed:
            return None
        return self.balancer.close(timeout)

    def plan_for(self, num_layers, num_slots, old_map):
        """phy2log [L, P] for vLLM's policy call: the agreed plan, or the map in use."""
        import torch

        with self.lock:
            agreed, self.agreed = self.agreed, None
            if agreed is not None:
                self.applying = agreed[0]
        if agreed is not None:
            return torch.from_numpy(agreed[1].phy2log)
        current = old_map if old_map is not None else self.current
        return current.detach().to("cpu", torch.int64)


_remote = None


def shutdown(timeout=5.0):
    """Remote mode: reports what was recorded and stops reporting (runs at exit too); returns the
    reporter's final statistics, or None when remote mode never started or stopped already."""
    return _remote.close(timeout) if _remote is not None else None


def _main_model_state(state):
    states = getattr(state, "model_states", None)
    if not states:
        raise ADAPTER.mismatch("has an EplbState without model_states")
    return next(iter(states.values()))


def _moving(state):
    """Whether an asynchronous rearrangement is still moving weights."""
    return any(getattr(m, "rebalanced", False) for m in state.model_states.values())


def install_remote(module, config):
    """Wraps vLLM's EplbState.step (checked: step(self, is_dummy, is_profile, log_stats) and the
    counters it keeps) to record each step's load, agree on plans at the rearrangement step and
    acknowledge them once applied."""
    global _remote
    cls = getattr(module, "EplbState", None)
    original = getattr(cls, "step", None)
    if original is None:
        raise ADAPTER.mismatch(f"has no EplbState.step in {STATE_MODULE}")
    if getattr(original, "eplb_remote", False):
        return
    parameters = _engines.parameter_names(original)
    if parameters[:3] != ["self", "is_dummy", "is_profile"]:
        raise ADAPTER.mismatch(f"declares EplbState.step({', '.join(parameters)})")
    _remote = _Remote(config)

    def step(self, *args, **kwargs):
        # step(is_dummy=False, is_profile=False, log_stats=False). This runs every step: a few
        # lines, and the add of the step's load pass on its device (vLLM zeroes it right after).
        if (args[1] if len(args) > 1 else kwargs.get("is_profile", False)):
            return original(self, *args, **kwargs)
        remote = _remote
        model_state = remote.model_state
        if model_state is None:
            remote.begin(self)
            model_state = remote.model_state
        if not (args[0] if args else kwargs.get("is_dummy", False)):
            remote.balancer.record_physical(model_state.expert_load_pass, remote.current)
        if self.expert_rearrangement_step + 1 >= self.expert_rearrangement_step_interval:
            remote.rebalance_point(self)
        if remote.applying is not None:
            # vLLM is switching maps, maybe one layer per step (async EPLB): each step's counts
            # go through the map they were routed with.
            remote.balancer.flush_batch()
        result = original(self, *args, **kwargs)
        if remote.applying is not None:
            remote.after_step(self)
        return result

    step.eplb_remote = True
    step.__doc__ = original.__doc__
    cls.step = step


def install_remote_policy(module):
    """Registers, under "default", a policy class that returns the plan the EP ranks agreed on
    (or the map in use); another model's shape (e.g. a drafter's) is planned locally with
    `balanced`."""
    registry = getattr(module, "EPLB_POLICIES", None)
    if not isinstance(registry, dict) or "default" not in registry:
        raise ADAPTER.mismatch(f'has no EPLB_POLICIES["default"] in {MODULE}')
    base, three_tables = _interface(module)

    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        remote = _remote
        shape = None if remote is None or remote.balancer is None else remote.balancer.shape
        if shape is None or (shape["num_layers"], shape["num_physical_experts"]) != (
                weight.shape[0], num_replicas):
            return rebalance(weight, num_replicas, num_groups, num_nodes, num_ranks,
                             old_global_expert_indices, policy="balanced",
                             three_tables=three_tables)
        phy2log = remote.plan_for(weight.shape[0], num_replicas, old_global_expert_indices)
        if not three_tables:
            return phy2log
        import torch

        tables = eplb.ExpertMap.from_phy2log(phy2log.numpy(), weight.shape[1], num_ranks)
        return phy2log, torch.from_numpy(tables.log2phy), torch.from_numpy(tables.logcnt)

    registry["default"] = type("EplbRemotePolicy", (base,), {
        "__module__": __name__, "__qualname__": "EplbRemotePolicy",
        "__doc__": "The plan the EP ranks agreed on (eplb.vllm remote mode).",
        "rebalance_experts": classmethod(rebalance_experts)})
    _engines.logger.info("eplb: vLLM %s plans EPLB with eplb-planner's plans", ADAPTER.version())
