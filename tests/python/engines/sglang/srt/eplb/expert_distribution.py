"""Stand-in for SGLang's expert distribution recorder: per-pass counts per physical slot of this
rank, turned into logical counts through the current map and summed over the ranks when dumped
(dump_record resets it), as EPLBManager reads them. `dumped` keeps the sum of every dump."""
import torch
import torch.distributed as dist

from sglang.srt.eplb.expert_location import get_global_expert_location_metadata


class ExpertDistributionRecorder:
    def __init__(self):
        self._passes = []
        self.dumped = None

    def on_forward_pass(self, physical_count):
        phy2log = get_global_expert_location_metadata().physical_to_logical_map_cpu
        num_logical = int(phy2log.max()) + 1
        logical = torch.zeros(phy2log.shape[0], num_logical, dtype=torch.int64)
        self._passes.append(logical.scatter_add_(1, phy2log.long(), physical_count.long()))

    def dump_record(self, output_mode="file"):
        assert output_mode == "object"
        logical_count = torch.stack(self._passes)
        self._passes = []
        dist.all_reduce(logical_count)
        total = logical_count.sum(dim=0)
        self.dumped = total if self.dumped is None else self.dumped + total
        return {"rank": dist.get_rank(), "logical_count": logical_count}


_recorder = ExpertDistributionRecorder()


def get_global_expert_distribution_recorder():
    return _recorder
