"""Stand-in for vllm.distributed.parallel_state: the EP group coordinator over torch.distributed's
world (one EP group, pipeline parallel size 1)."""
import dataclasses

import torch.distributed as dist


@dataclasses.dataclass
class GroupCoordinator:
    world_size: int
    rank_in_group: int
    ranks: list


def get_ep_group():
    return GroupCoordinator(dist.get_world_size(), dist.get_rank(),
                            list(range(dist.get_world_size())))
