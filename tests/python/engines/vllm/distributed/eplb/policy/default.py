"""Stand-in for vLLM's default policy: slot p holds expert p mod E (recognisably not eplb's)."""
import torch

from vllm import FORM

from .abstract import AbstractEplbPolicy


class DefaultEplbPolicy(AbstractEplbPolicy):
    @classmethod
    def rebalance_experts(cls, weight, num_replicas, num_groups, num_nodes, num_ranks,
                          old_global_expert_indices=None):
        num_layers, num_logical = weight.shape
        phy2log = (torch.arange(num_replicas) % num_logical).repeat(num_layers, 1)
        if FORM in ("0.13", "0.18"):
            from ..eplb_state import compute_logical_maps

            return (phy2log, *compute_logical_maps(phy2log, num_logical))
        return phy2log
