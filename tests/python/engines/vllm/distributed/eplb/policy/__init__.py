"""Stand-in for vllm.distributed.eplb.policy: the registry of policy classes by name."""
from .abstract import AbstractEplbPolicy
from .default import DefaultEplbPolicy

EPLB_POLICIES = {"default": DefaultEplbPolicy}
__all__ = ["AbstractEplbPolicy", "DefaultEplbPolicy", "EPLB_POLICIES"]
