"""Stand-in for vllm-ascend's EPLB worker: builds the policy through the factory (the class bound
at import, the method looked up at call time), runs it in a child process as vllm-ascend's
EplbProcess does, and applies vllm-ascend's map checker, which reverts a layer that loses an
expert, holds two replicas of one expert on one rank, or moves an expert within a rank."""
import multiprocessing

import torch

from vllm_ascend import FORM
from vllm_ascend.eplb.core.policy.policy_factory import DynamicConfig, PolicyFactory


def check_expert_placement(old_placement, new_placement):
    """Reverts invalid layers of new_placement to old_placement; returns their indices."""
    reverted = []
    for layer in range(old_placement.shape[0]):
        if torch.unique(new_placement[layer]).numel() < torch.unique(old_placement[layer]).numel():
            new_placement[layer] = old_placement[layer]
            reverted.append(layer)
            continue
        for rank in range(old_placement.shape[1]):
            new, old = new_placement[layer][rank], old_placement[layer][rank]
            stays = torch.isin(new, old)
            if (new.numel() != torch.unique(new).numel()
                    or not torch.equal(new[stays], old[stays])):
                new_placement[layer] = old_placement[layer]
                reverted.append(layer)
                break
    return reverted


class EplbWorker:
    def __init__(self, policy_type):
        if FORM == "0.11":
            self.policy = PolicyFactory.generate_policy(policy_type, DynamicConfig())
        else:
            self.policy = PolicyFactory.generate_policy(policy_type)

    def do_update(self, old_placement, load):
        changed, priority, new_placement = self.policy.rebalance_experts(old_placement, load)
        if not torch.is_tensor(new_placement):
            new_placement = torch.tensor(new_placement)
        reverted = check_expert_placement(old_placement, new_placement)
        return changed, list(priority), new_placement, reverted


class EplbProcess:
    """Runs the worker's policy in a child process (the worker, and its policy, pickled when the
    start method is spawn)."""

    def __init__(self, policy_type, start_method="fork"):
        self.worker = EplbWorker(policy_type)
        self.start_method = start_method

    def _child(self, inputs, outputs):
        changed, priority, new_placement, reverted = self.worker.do_update(*inputs.get())
        # By value: a tensor sent through the queue would be shared with the exiting child.
        outputs.put((changed, priority, new_placement.numpy(), reverted))

    def run(self, old_placement, load):
        context = multiprocessing.get_context(self.start_method)
        inputs, outputs = context.Queue(), context.Queue()
        child = context.Process(target=self._child, args=(inputs, outputs), daemon=True)
        child.start()
        inputs.put((old_placement, load))
        changed, priority, new_placement, reverted = outputs.get(timeout=120)
        child.join()
        return changed, priority, torch.from_numpy(new_placement), reverted
