"""Stand-in for vLLM's EplbState: looks the policy up by name at model set-up and calls it as
vLLM's sync and async (worker thread) rearrangement do, with vLLM's checks on the result; and the
per-step hook of vLLM 0.13+ (step(is_dummy, is_profile, log_stats) over model_states, with
expert_load_pass per step, a window, and a rearrangement every step_interval steps that all-reduces
the logical load over the EP group, calls the policy and updates the maps in place)."""
import threading

import torch.distributed as dist

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


class Model:
    """The model's MixtureOfExperts attributes the state reads."""

    def __init__(self, num_expert_groups=1):
        self.num_expert_groups = num_expert_groups


class EplbModelState:
    def __init__(self, model, phy2log, num_logical, window_size):
        self.model = model
        self.physical_to_logical_map = phy2log.clone()
        self.logical_to_physical_map, self.logical_replica_count = compute_logical_maps(
            phy2log, num_logical)
        self.expert_load_pass = torch.zeros(phy2log.shape, dtype=torch.int32)
        self.expert_load_window = torch.zeros((window_size, *phy2log.shape), dtype=torch.int32)
        self.rebalanced = False


class EplbState:
    def __init__(self, policy_type="default", step_interval=3000, window_size=1000):
        self.policy = EPLB_POLICIES[policy_type]
        self.model_states = {}
        self.expert_rearrangement_step = 0
        self.expert_rearrangement_step_interval = step_interval
        self.expert_load_window_step = 0
        self.expert_load_window_size = window_size

    def add_model(self, model, phy2log, num_logical):
        self.model_states[f"model{len(self.model_states)}"] = EplbModelState(
            model, phy2log, num_logical, self.expert_load_window_size)

    def step(self, is_dummy=False, is_profile=False, log_stats=False):
        if is_profile:
            return
        for state in self.model_states.values():
            if is_dummy:
                state.expert_load_pass.zero_()
            state.expert_load_window[self.expert_load_window_step] = state.expert_load_pass
            state.expert_load_pass.zero_()
        self.expert_load_window_step = (self.expert_load_window_step + 1) % \
            self.expert_load_window_size
        self.expert_rearrangement_step += 1
        if self.expert_rearrangement_step >= self.expert_rearrangement_step_interval:
            self.expert_rearrangement_step = 0
            self.rearrange_models()

    def rearrange_models(self):
        for state in self.model_states.values():
            phy2log = state.physical_to_logical_map
            num_logical = state.logical_replica_count.shape[1]
            window = state.expert_load_window
            logical = torch.zeros((*window.shape[:2], num_logical), dtype=torch.int64)
            logical.scatter_add_(2, phy2log.unsqueeze(0).expand_as(window), window.long())
            load = logical.sum(dim=0)
            dist.all_reduce(load)
            new_phy2log, log2phy, logcnt = self.rearrange(
                load, phy2log.shape[1], state.model.num_expert_groups, 1, dist.get_world_size(),
                phy2log)
            state.physical_to_logical_map.copy_(new_phy2log)
            state.logical_to_physical_map, state.logical_replica_count = log2phy, logcnt

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
