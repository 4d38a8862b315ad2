"""Small distributed helpers shared by the trainer and the criterion."""

import torch
import torch.distributed as dist

__all__ = ["all_reduce_mean"]


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean of ``tensor`` over the processes of the default group (the tensor itself outside
    distributed training); a new tensor, the input is left unchanged."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    total = tensor.detach().clone().contiguous()
    dist.all_reduce(total)
    return total / dist.get_world_size()
