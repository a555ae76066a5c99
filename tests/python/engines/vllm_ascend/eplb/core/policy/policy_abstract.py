"""Stand-in for vllm-ascend's policy base class."""


class DynamicConfig:
    pass


class EplbPolicy:
    def __init__(self, config=None):
        self.config = config

    def rebalance_experts(self, current_expert_table, expert_workload):
        """-> (changed, priority, new_table [L, R, S])"""
        raise NotImplementedError
