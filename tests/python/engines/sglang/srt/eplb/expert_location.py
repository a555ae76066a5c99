"""Stand-in for SGLang's ExpertLocationMetadata: the global current map, and init_by_eplb calling
the algorithm module as SGLang does (keywords, module attribute looked up at call time) and
checking the result as SGLang's dispatch needs it."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from sglang.srt.eplb import eplb_algorithms


@dataclass
class ModelConfigForExpertLocation:
    num_layers: int
    num_logical_experts: int
    num_groups: Optional[int] = None


@dataclass
class ExpertLocationMetadata:
    physical_to_logical_map: torch.Tensor
    physical_to_logical_map_cpu: torch.Tensor
    logical_to_all_physical_map: torch.Tensor
    logical_to_all_physical_map_num_valid: torch.Tensor

    @staticmethod
    def init_trivial(server_args, model_config):
        num_physical = model_config.num_logical_experts + server_args.ep_num_redundant_experts
        phy2log = (torch.arange(num_physical) % model_config.num_logical_experts).repeat(
            model_config.num_layers, 1)
        return ExpertLocationMetadata(phy2log, phy2log.cpu(), None, None)

    @staticmethod
    def init_by_eplb(server_args, model_config, logical_count):
        if not isinstance(logical_count, torch.Tensor):
            logical_count = torch.tensor(logical_count)
        if len(logical_count.shape) == 2:
            logical_count = logical_count.unsqueeze(0)
        logical_count = logical_count.to(server_args.device)
        num_physical = model_config.num_logical_experts + server_args.ep_num_redundant_experts
        assert num_physical % server_args.ep_size == 0
        phy2log, log2phy, _ = eplb_algorithms.rebalance_experts(
            tokens_per_expert=logical_count,
            num_physical_experts=num_physical,
            num_local_physical_experts=num_physical // server_args.ep_size,
            num_groups=model_config.num_groups,
            num_nodes=server_args.nnodes,
            algorithm=eplb_algorithms.compute_algorithm(
                raw_algorithm=server_args.eplb_algorithm, num_groups=model_config.num_groups,
                num_nodes=server_args.nnodes),
        )
        phy2log = phy2log.to(server_args.device)
        log2phy = log2phy.to(server_args.device)
        assert log2phy.shape[-1] <= num_physical
        padded = F.pad(log2phy, (0, num_physical - log2phy.shape[-1]), value=-1)
        num_valid = torch.count_nonzero(padded != -1, dim=-1)
        # Dispatch picks among the first num_valid entries: every expert needs one, left-packed.
        assert bool((num_valid >= 1).all()), "a logical expert has no replica"
        width = torch.arange(num_physical).expand_as(padded)
        assert bool(((padded != -1) == (width < num_valid.unsqueeze(-1))).all()), "not left-packed"
        return ExpertLocationMetadata(phy2log, phy2log.cpu(), padded, num_valid)


_global_expert_location_metadata: Optional[ExpertLocationMetadata] = None


def get_global_expert_location_metadata():
    return _global_expert_location_metadata


def set_global_expert_location_metadata(value):
    global _global_expert_location_metadata
    _global_expert_location_metadata = value
