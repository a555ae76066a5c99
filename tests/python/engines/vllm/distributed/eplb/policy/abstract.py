"""Stand-in for vLLM's AbstractEplbPolicy, in the form STANDIN_VLLM_FORM names."""
from abc import ABC, abstractmethod

import torch

from vllm import FORM


class AbstractEplbPolicy(ABC):
    if FORM == "0.13":
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int,
                              num_nodes: int, num_ranks: int
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            raise NotImplementedError
    elif FORM == "0.18":
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int,
                              num_nodes: int, num_ranks: int,
                              old_global_expert_indices: torch.Tensor | None = None
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            raise NotImplementedError
    elif FORM == "changed-parameters":
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int,
                              num_ranks: int) -> torch.Tensor:
            raise NotImplementedError
    elif FORM == "changed-return":
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int,
                              num_nodes: int, num_ranks: int,
                              old_global_expert_indices: torch.Tensor | None = None) -> dict:
            raise NotImplementedError
    else:
        @classmethod
        @abstractmethod
        def rebalance_experts(cls, weight: torch.Tensor, num_replicas: int, num_groups: int,
                              num_nodes: int, num_ranks: int,
                              old_global_expert_indices: torch.Tensor | None = None
                              ) -> torch.Tensor:
            raise NotImplementedError
