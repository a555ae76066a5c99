"""eplb: expert placement for Mixture-of-Experts inference with expert parallelism.

The placement policies of eplb's C++ core (`contiguous`, `deepseek` — DeepSeek's hierarchical
algorithm, bit for bit — and `balanced`), its quality metrics and its map formats, for Python:

    import eplb
    phy2log = eplb.rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks)
    m = eplb.plan(load, num_physical_experts=288, num_ranks=32, num_groups=8, num_nodes=4)
    print(eplb.evaluate(m, load).mean_balancedness)
    m.write("map.json", format="vllm-ascend")

Arrays may be numpy arrays, torch tensors (any device; planning runs on the CPU) or nested lists.
`rebalance_experts` returns the caller's type: torch tensors on the input's device for a tensor,
numpy arrays otherwise. Planning releases the GIL. The same input gives the same map on every
machine, whatever the thread count: engines plan on every rank independently and must agree.

Bad shapes or values raise ValueError with the core library's message (which field, which value,
which range); nothing is changed or half-written when a call raises.

Engine adapters: `eplb.vllm`, `eplb.sglang`, `eplb.vllm_ascend` (see their module documentation).
"""

from eplb._core import BalancedOptions, Evaluation, ExpertMap
from eplb._core import map_format_names as _map_format_names
from eplb._core import policy_names as _policy_names
from eplb import _core
from eplb._arrays import as_numpy as _as_numpy

__all__ = [
    "LOAD_FORMATS",
    "BalancedOptions",
    "Evaluation",
    "ExpertMap",
    "MAP_FORMATS",
    "POLICIES",
    "evaluate",
    "plan",
    "read_load",
    "read_replica_shares",
    "rebalance_experts",
    "replica_shares",
]

__version__ = "0.1.0"

#: The placement policies, in the order they are documented.
POLICIES = tuple(_policy_names())
#: The map file formats ExpertMap.read/write and eplbctl speak.
MAP_FORMATS = tuple(_map_format_names())
#: The load inputs read_load and eplbctl plan --load-format read.
LOAD_FORMATS = ("eplb", "sglang", "trtllm-stats")


def _previous_map(previous, num_logical_experts, num_ranks):
    """An ExpertMap from an ExpertMap or a phy2log table [L, P]."""
    if previous is None or isinstance(previous, ExpertMap):
        return previous
    table, _ = _as_numpy(previous)
    try:
        return ExpertMap.from_phy2log(table, num_logical_experts, num_ranks)
    except ValueError as error:
        raise ValueError(f"previous: {error}") from None


def plan(load, num_physical_experts, num_ranks, *, num_groups=1, num_nodes=1, policy="balanced",
         previous=None, options=None, num_layers=None, num_logical_experts=None) -> ExpertMap:
    """Plans an expert map.

    load: [L, E] tokens per logical expert (any integer or floating dtype); None only for the
    `contiguous` policy, which then needs num_layers and num_logical_experts. previous: the map in
    use (an ExpertMap, or its phy2log [L, P]); `balanced` plans from it, moving as little as it
    can. options: a BalancedOptions, for the `balanced` policy only. P need not be a multiple of R
    for `contiguous` and `balanced` (the first P mod R ranks get one slot more).
    """
    array = None
    if load is not None:
        array, _ = _as_numpy(load)
    if num_logical_experts is None and array is not None and array.ndim == 2:
        num_logical_experts = array.shape[1]
    prev = None
    if previous is not None and (array is None or array.ndim == 2):
        prev = _previous_map(previous, num_logical_experts or 0, num_ranks)
    return _core.plan(array, num_layers or 0, num_logical_experts or 0, num_physical_experts,
                      num_ranks, num_groups, num_nodes, policy, prev, options)


def rebalance_experts(weight, num_replicas, num_groups, num_nodes, num_ranks, *,
                      policy="balanced", previous=None, options=None, tables=False):
    """DeepSeek's entry point, with eplb's policies.

    weight: [L, E] load per logical expert, any integer or floating dtype. previous: the phy2log
    [L, P] in use; `balanced` plans from it (experts that stay keep their slot). Returns phy2log
    [L, P] (int64); with tables=True the triple (phy2log, log2phy [L, E, P - E + 1] padded with -1,
    logcnt [L, E]) with the meaning of DeepSeek's function: log2phy[l][e][k] is the slot of replica
    k of expert e. Torch tensors in give torch tensors out, on the input's device.
    """
    array, restore = _as_numpy(weight)
    prev = None
    if previous is not None and array.ndim == 2:
        prev = _previous_map(previous, array.shape[1], num_ranks)
    result = _core.plan(array, 0, 0, num_replicas, num_ranks, num_groups, num_nodes, policy, prev,
                        options)
    if not tables:
        return restore(result.phy2log)
    return restore(result.phy2log), restore(result.log2phy), restore(result.logcnt)


def evaluate(map, load, previous=None, *, bytes_per_expert=0,  # noqa: A002
             replica_shares=None) -> Evaluation:
    """The quality of `map` under `load` [L, E]: balancedness (mean / max rank load, each expert's
    tokens split evenly over its replicas), max / lower bound and max / count bound (tighter with
    2-4 slots per rank and at most 12 experts, and with 2 slots per rank) per layer, with their
    min and mean; with `previous` (an ExpertMap or a phy2log table of the same shape) also what
    moving from it costs: slots changed, experts received (in all and per rank) and bytes moved
    (experts received × bytes_per_expert).

    replica_shares: the weighted balance beside the uniform one (weighted_balancedness, with its
    min and mean; None without): "optimal" for the shares that balance the ranks best (as
    replica_shares() computes them), or a table [L, P] of each slot's share of its expert's
    tokens (as read_replica_shares() reads them), checked as the map format checks them."""
    array, _ = _as_numpy(load)
    prev = _previous_map(previous, map.num_logical_experts, map.num_ranks)
    if replica_shares is not None and not isinstance(replica_shares, str):
        replica_shares, _ = _as_numpy(replica_shares)
    return _core.evaluate(map, array, prev, bytes_per_expert, replica_shares)


def replica_shares(map, load):  # noqa: A002
    """Replica routing shares [L, P] (float64): for each slot, the share of its expert's tokens
    its replica should receive so that the busiest rank under `load` [L, E] is as low as `map`
    allows (each expert's shares sum to 1; uniform routing gives 1 / replicas). For engines that
    split an expert's tokens unevenly over its replicas; `map.write(path,
    replica_shares=shares)` stores them in the eplb format."""
    array, _ = _as_numpy(load)
    return _core.replica_shares(map, array)


def read_replica_shares(path, *, num_logical_experts=None, num_ranks=None, layer_ids=None,
                        num_hidden_layers=None):
    """The replica routing shares [L, P] an eplb map file carries (its "replica_share"), checked
    against the file's map; None when it carries none (and for the other formats, which take the
    hints ExpertMap.read takes)."""
    return _core.read_replica_shares(path, num_logical_experts=num_logical_experts,
                                     num_ranks=num_ranks, layer_ids=layer_ids,
                                     num_hidden_layers=num_hidden_layers)


def read_load(path, format="eplb", *, layer_ids=None, num_hidden_layers=None,  # noqa: A002
              iterations=None):
    """The load an engine recorded, as a float64 numpy array [MoE layers, experts]:

    - "eplb": the load file {"load": [[...E...] x L]}.
    - "sglang": SGLang's expert distribution, a row per hidden layer: the logical_count JSON that
      --init-expert-location reads, or the .pt file its /dump_expert_distribution_record writes
      (read with torch). Steps are summed; `layer_ids` (e.g. "3-60", or a sequence of indices)
      and `num_hidden_layers` say which rows are MoE layers (unset: all of them).
    - "trtllm-stats": TensorRT-LLM's expert statistics directory (meta_info.json and
      rank{r}.safetensors), summed over ranks and over `iterations` = (first, last) with the last
      excluded (unset: all recorded); `layer_ids` chooses the layers (unset: all recorded).

    Bad files raise ValueError naming the file and the field (FileNotFoundError, OSError for
    files that cannot be read)."""
    if format == "sglang" and str(path).endswith(".pt"):
        import pickle

        import torch

        try:
            # weights_only: a pickle from elsewhere must not run code here.
            dump = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(f"{path}: cannot be read safely (torch.load with weights_only, torch "
                             f"{torch.__version__}): {str(error).splitlines()[-1][-200:]}") from None
        counts = dump.get("logical_count") if isinstance(dump, dict) else None
        if counts is None:
            raise ValueError(f"{path}: expected a dict with logical_count (SGLang's expert "
                             "distribution dump)")
        counts = torch.as_tensor(counts)
        if counts.dim() == 3:
            counts = counts.sum(dim=0, dtype=torch.int64)
        return _core.moe_layers_of(counts.numpy(), layer_ids, num_hidden_layers)
    return _core.read_load(path, format, layer_ids, num_hidden_layers,
                           None if iterations is None else tuple(iterations))
