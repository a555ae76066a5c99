"""Arrays in and out of eplb._core: numpy arrays, torch tensors and nested lists."""

import sys

import numpy as np


def is_tensor(value) -> bool:
    # A tensor can only exist if torch is imported already: never import it here.
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def as_numpy(value):
    """(array, restore): `value` as a numpy array, and a function that turns a result array into
    the caller's type (a torch tensor on the input's device for a tensor input).

    A CPU tensor is viewed without copying; a tensor on another device is copied to the CPU.
    Half-precision tensors are widened to float32 (numpy has no bfloat16). eplb._core checks
    dtypes and shapes.
    """
    if is_tensor(value):
        import torch

        tensor = value.detach()
        if tensor.dtype in (torch.float16, torch.bfloat16):
            tensor = tensor.to(torch.float32)
        device = value.device
        array = tensor.cpu().numpy()
        if device.type == "cpu":
            return array, torch.from_numpy
        return array, lambda result: torch.from_numpy(result).to(device)
    if isinstance(value, np.ndarray):
        return value, _identity
    return np.asarray(value), _identity


def _identity(result):
    return result
