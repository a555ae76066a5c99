"""Stand-in for SGLang's EPLB algorithm module; SGLang's callers look rebalance_experts up on this
module at every call. Its own algorithm is recognisably not eplb's: slot p holds expert p mod E."""
from enum import Enum, auto
from typing import Optional

import torch

from sglang import FORM


class EplbAlgorithm(Enum):
    deepseek = auto()
    deepseek_hierarchical = auto()
    elasticity_aware = auto()


if FORM == "changed-parameters":
    def rebalance_experts(tokens_per_expert: torch.Tensor, num_physical_experts: int,
                          num_groups: Optional[int], algorithm: EplbAlgorithm):
        raise NotImplementedError
else:
    def rebalance_experts(tokens_per_expert: torch.Tensor, num_physical_experts: int,
                          num_local_physical_experts: int, num_groups: Optional[int],
                          num_nodes: int, algorithm: EplbAlgorithm):
        _, num_layers, num_logical = tokens_per_expert.shape
        phy2log = (torch.arange(num_physical_experts) % num_logical).repeat(num_layers, 1)
        log2phy = torch.full((num_layers, num_logical, num_physical_experts - num_logical + 1),
                             -1, dtype=torch.int64)
        for layer in range(num_layers):
            used = [0] * num_logical
            for slot, expert in enumerate(phy2log[layer].tolist()):
                log2phy[layer, expert, used[expert]] = slot
                used[expert] += 1
        return phy2log, log2phy, (log2phy >= 0).sum(-1)


def compute_algorithm(raw_algorithm: str, num_groups: Optional[int], num_nodes: int):
    if raw_algorithm != "auto":
        return EplbAlgorithm[raw_algorithm]
    if num_groups is not None and num_groups % num_nodes == 0:
        return EplbAlgorithm.deepseek_hierarchical
    return EplbAlgorithm.deepseek
