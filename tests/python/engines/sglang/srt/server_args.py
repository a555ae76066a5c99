"""Stand-in for SGLang's ServerArgs: the fields its EPLB reads."""
from dataclasses import dataclass


@dataclass
class ServerArgs:
    ep_size: int = 1
    nnodes: int = 1
    ep_num_redundant_experts: int = 0
    eplb_algorithm: str = "auto"
    device: str = "cpu"
    eplb_rebalance_num_iterations: int = 1000
