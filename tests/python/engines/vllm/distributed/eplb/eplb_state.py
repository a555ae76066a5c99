"""Stand-in for vLLM's EplbState: looks the policy up by name at model set-up and calls it as
vLLM's sync and async (worker thread) rearrangement do, with vLLM's checks on the result."""
import threading

import torch

from vllm import FORM

from .policy import EPLB_POLICIES


def compute_logical_maps(phy2log, num_logical):
    """log2phy (slots in slot order, -1 padded) and logcnt from phy2log; -1 slots are empty."""
    assert phy2log.device.type == "cpu"
    num_layers, num_physical = phy2log.shape
    logcnt = torch.zeros(num_layers, num_logical, dtype=phy2log.dtype)
    logcnt.scatter_add_(1, phy2log.clamp(min=0), (phy2log >= 0).to(phy2log.dtype))
    log2phy = torch.full((num_layers, num_logical, num_physical - num_logical + 1), -1,
                         dtype=torch.int64)
    for layer in range(num_layers):
        used = [0] * num_logical
        for slot, expert in enumerate(phy2log[layer].tolist()):
            if expert >= 0:
                log2phy[layer, expert, used[expert]] = slot
                used[expert] += 1
    return log2phy, logcnt


class EplbState:
    def __init__(self, policy_type="default"):
        self.policy = EPLB_POLICIES[policy_type]

    def rearrange(self, weight, num_replicas, num_groups, num_nodes, num_gpus, old_map,
                  use_async=False):
        def call(weight, old_map):
            if FORM == "0.13":
                return self.policy.rebalance_experts(weight, num_replicas, num_groups, num_nodes,
                                                     num_gpus)
            return self.policy.rebalance_experts(weight, num_replicas, num_groups, num_nodes,
                                                 num_gpus, old_map)

        if use_async:
            results = []
            thread = threading.Thread(target=lambda: results.append(call(weight.cpu(),
                                                                         old_map.cpu())))
            thread.start()
            thread.join()
            result = results[0]
            phy2log = result if FORM not in ("0.13", "0.18") else result[0]
            assert phy2log.device == torch.device("cpu")
        else:
            result = call(weight, old_map)
        if FORM in ("0.13", "0.18"):
            phy2log, log2phy, logcnt = result
        else:
            phy2log = result
            log2phy, logcnt = compute_logical_maps(phy2log, weight.shape[1])
        assert phy2log.shape == (weight.shape[0], num_replicas)
        return phy2log, log2phy, logcnt
