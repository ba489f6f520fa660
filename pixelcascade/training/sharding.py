"""Sharded data parallelism (train.sharding=fsdp): PyTorch's FSDP2 ``fully_shard`` over each UNet layer, so that
each of N processes holds 1/N of the weights, gradients, optimizer moments and EMA between uses.

Checkpoints hold full tensors (gathered on every process, written by rank 0) and the optimizer state keyed by
parameter name, so a run resumes on any number of processes, sharded or not.
"""

from __future__ import annotations

import torch


def shard_model(model: torch.nn.Module, device: torch.device) -> None:
    """fully_shard each layer of the input, middle and output blocks (ResBlocks, attention blocks, convolutions:
    gathered one at a time in the forward and backward passes), then the rest (embeddings, text pathway, output)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    for p in model.parameters():  # FSDP shards flat storage: channels-last convolution weights become contiguous
        p.data = p.data.contiguous()
    for block in [*model.input_blocks, model.middle_block, *model.output_blocks]:
        for layer in block:  # a block is a ModuleList (no forward of its own): its layers are the units
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded (DTensor) parameter; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


def _options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every weight and buffer in full (a collective: every process calls it; rank 0 gets the tensors)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict
    return get_model_state_dict(model, options=_options())


def named_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    """The optimizer state in full, keyed by parameter name (a collective when the model is sharded)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    return get_optimizer_state_dict(model, opt, options=_options())


def load_named_optimizer_state(model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, optim_state_dict=state, options=_options())


def by_name(state: dict, names: list[str]) -> dict:
    """A plain optimizer state dict (keyed by the position of each parameter) keyed by ``names`` instead."""
    groups = [dict(g, params=[names[i] for i in g["params"]]) for g in state["param_groups"]]
    return {"state": {names[i]: v for i, v in state["state"].items()}, "param_groups": groups}
