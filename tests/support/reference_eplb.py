"""The reference hierarchical placement algorithm, transcribed in torch from REFERENCE-ALGORITHM.md.

Used by the Python tests (eplb's `deepseek` policy must equal it bit for bit on integer loads) and
by the Python benchmark (its cost stands for the engines' own Python implementations). It is
written as those implementations are: torch tensors in float32, replication vectorised over rows,
the balanced packing in a Python loop per row.

Sorting is stable (equal loads keep index order), as the reference states. An engine whose port
sorts with an unstable sort can order tied experts differently.
"""

import torch


def pack(weight: torch.Tensor, num_packs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced packing of each row's n items into num_packs packs of exactly n / num_packs items.

    weight: [rows, n] float32. Returns (pack [rows, n], pos [rows, n]) int64: the pack of each item
    and its position inside the pack.
    """
    rows, n = weight.shape
    cap = n // num_packs
    if cap == 1:
        index = torch.arange(n, dtype=torch.int64).expand(rows, n).clone()
        return index, torch.zeros_like(index)
    order = torch.sort(weight, dim=-1, descending=True, stable=True).indices.tolist()
    values = weight.tolist()  # float32 values, exactly, as Python floats (double)
    packs, positions = [], []
    for row in range(rows):
        load = [0.0] * num_packs
        count = [0] * num_packs
        pack_of, pos_of = [0] * n, [0] * n
        for item in order[row]:
            best = min((j for j in range(num_packs) if count[j] < cap), key=load.__getitem__)
            pack_of[item], pos_of[item] = best, count[best]
            count[best] += 1
            load[best] += values[row][item]
        packs.append(pack_of)
        positions.append(pos_of)
    return torch.tensor(packs, dtype=torch.int64), torch.tensor(positions, dtype=torch.int64)


def replicate(weight: torch.Tensor, num_physical: int):
    """Adds replicas, one at a time, to the item with the largest float32 load / count.

    weight: [rows, n] float32. Returns (phy, rank, cnt): phy [rows, num_physical] the item of each
    replica, rank [rows, num_physical] its replica rank, cnt [rows, n] the replica counts (int64).
    """
    rows, n = weight.shape
    phy = torch.arange(num_physical, dtype=torch.int64).repeat(rows, 1)
    rank = torch.zeros(rows, num_physical, dtype=torch.int64)
    cnt = torch.ones(rows, n, dtype=torch.int64)
    row = torch.arange(rows, dtype=torch.int64)
    for i in range(n, num_physical):
        best = (weight / cnt).max(dim=-1).indices  # float32 quotients; ties: the first index
        phy[:, i] = best
        rank[:, i] = cnt[row, best]
        cnt[row, best] += 1
    return phy, rank, cnt


def inverse(perm: torch.Tensor) -> torch.Tensor:
    """The inverse of each row's permutation."""
    inv = torch.empty_like(perm)
    inv.scatter_(1, perm, torch.arange(perm.size(1), dtype=torch.int64).expand(perm.shape))
    return inv


def hierarchical(weight: torch.Tensor, num_physical: int, num_groups: int, num_nodes: int,
                 num_ranks: int):
    """Steps 1-4 of the reference for every layer. weight: [L, E] float32."""
    num_layers, num_logical = weight.shape
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    experts_per_node = num_logical // num_nodes
    slots_per_node = num_physical // num_nodes
    ranks_per_node = num_ranks // num_nodes
    slots_per_rank = num_physical // num_ranks

    # 1. Groups to nodes; renumber experts node-major: m(e) = (node·gpn + pos)·gs + e mod gs.
    group_load = weight.unflatten(-1, (num_groups, group_size)).sum(-1)
    group_node, group_pos = pack(group_load, num_nodes)
    log2mlog = (((group_node * groups_per_node + group_pos) * group_size).unsqueeze(-1) +
                torch.arange(group_size, dtype=torch.int64)).flatten(-2)
    mlog2log = inverse(log2mlog)

    # 2. Replicas inside each node.
    node_load = weight.gather(-1, mlog2log).view(-1, experts_per_node)
    phy, replica_rank, cnt = replicate(node_load, slots_per_node)

    # 3. Replicas onto the node's ranks, by replica load = expert load / final count (float32).
    replica_load = (node_load / cnt).gather(-1, phy)
    rank_of, pos = pack(replica_load, ranks_per_node)
    slot_of_replica = rank_of * slots_per_rank + pos
    replica_of_slot = inverse(slot_of_replica)

    # 4. Output tables.
    slot_mlog = phy.gather(-1, replica_of_slot)
    slot_mlog = (slot_mlog.view(num_layers, num_nodes, slots_per_node) +
                 (torch.arange(num_nodes, dtype=torch.int64) * experts_per_node).view(1, -1, 1)
                 ).flatten(-2)
    phy2log = mlog2log.gather(-1, slot_mlog)
    slot_rank = replica_rank.gather(-1, replica_of_slot).view(num_layers, -1)
    logcnt = cnt.view(num_layers, -1).gather(-1, log2mlog)
    return phy2log, slot_rank, logcnt


def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int, num_nodes: int,
                      num_ranks: int):
    """The reference entry point: (phy2log [L, P], log2phy [L, E, P - E + 1], logcnt [L, E])."""
    num_layers, num_logical = weight.shape
    assert num_replicas % num_ranks == 0 and num_replicas >= num_logical
    weight = weight.float().cpu()
    if num_groups % num_nodes == 0:
        phy2log, slot_rank, logcnt = hierarchical(weight, num_replicas, num_groups, num_nodes,
                                                  num_ranks)
    else:
        phy2log, slot_rank, logcnt = hierarchical(weight, num_replicas, 1, 1, num_ranks)
    width = num_replicas - num_logical + 1
    log2phy = torch.full((num_layers, num_logical * width), -1, dtype=torch.int64)
    log2phy.scatter_(-1, phy2log * width + slot_rank,
                     torch.arange(num_replicas, dtype=torch.int64).expand(num_layers, -1))
    return phy2log, log2phy.view(num_layers, num_logical, width), logcnt
