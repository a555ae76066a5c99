"""Stand-in for vllm-ascend's policy factory, in the form STANDIN_VLLM_ASCEND_FORM names. Its
own policy returns the table unchanged (recognisably not eplb's)."""
from vllm_ascend import FORM

from .policy_abstract import DynamicConfig, EplbPolicy  # noqa: F401 (the 0.11 caller imports both)


class KeepEplb(EplbPolicy):
    def rebalance_experts(self, current_expert_table, expert_workload):
        return 0, list(range(current_expert_table.shape[0])), current_expert_table.clone()


class PolicyFactory:
    if FORM == "0.11":
        @staticmethod
        def generate_policy(policy_type: int, config: DynamicConfig) -> EplbPolicy:
            return KeepEplb(config)
    elif FORM == "changed-parameters":
        @staticmethod
        def generate_policy(policy_type: int, config: DynamicConfig, stage: str) -> EplbPolicy:
            return KeepEplb(config)
    else:
        @staticmethod
        def generate_policy(policy_type: int) -> EplbPolicy:
            return KeepEplb()
