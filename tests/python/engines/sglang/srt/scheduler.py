"""Stand-in for SGLang's launcher and scheduler processes: the launcher spawns a scheduler, which
sets up the expert location (with a current map, if given) and rebalances once with the counts,
as EPLBManager.rebalance does. Returns what SGLang keeps."""
import io
import logging
import multiprocessing

import torch

from sglang.srt.eplb import eplb_algorithms, expert_location
from sglang.srt.server_args import ServerArgs


def run_scheduler(queue, server_args, model_config, counts, current):
    log = io.StringIO()
    logging.basicConfig(stream=log, level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
    if current is not None:
        current = torch.tensor(current)
        expert_location.set_global_expert_location_metadata(
            expert_location.ExpertLocationMetadata(current, current.cpu(), None, None))
    metadata = expert_location.ExpertLocationMetadata.init_by_eplb(
        server_args, model_config, torch.tensor(counts, dtype=torch.int32))
    queue.put({
        "phy2log": metadata.physical_to_logical_map.tolist(),
        "log2phy": metadata.logical_to_all_physical_map.tolist(),
        "num_valid": metadata.logical_to_all_physical_map_num_valid.tolist(),
        "dtypes": [str(metadata.physical_to_logical_map.dtype),
                   str(metadata.logical_to_all_physical_map.dtype)],
        "algorithm": eplb_algorithms.rebalance_experts.__module__,
        "log": log.getvalue(),
    })


def launch(ep_size, nnodes, num_redundant, num_layers, num_experts, num_groups, counts,
           current=None, algorithm="auto"):
    """The launcher: spawns one scheduler process and returns its result."""
    server_args = ServerArgs(ep_size=ep_size, nnodes=nnodes, ep_num_redundant_experts=num_redundant,
                             eplb_algorithm=algorithm)
    model_config = expert_location.ModelConfigForExpertLocation(num_layers, num_experts, num_groups)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=run_scheduler,
                            args=(queue, server_args, model_config, counts, current))
    child.start()
    result = queue.get(timeout=300)
    child.join()
    return result
