"""Weights that live off the device and come to it only while they run: offloading by model and by block.

A :class:`WeightStreamer` splits a model into units (the UNet's blocks: each ResBlock, attention block and
conv, the time embedding, the text projection...; or the whole model as one unit). A unit's weights are on the
device only from the first call into it until another unit is loaded (``window`` units stay), and come from a
source: :class:`MemorySource`, a copy in CPU memory (pinned, for a GPU: diffusers' sequential offload, with the
next unit copied on a side stream while this one runs), or ``tensorfiles.FileSource``, the model's own
.safetensors read with plain reads (a CPU run whose resident weights are one block, not the model).

Only parameters move; buffers stay where they are (a UNet's are a few KB). Code that reads a unit's weights
without calling into it cannot be streamed: the UNet's per-run text keys/values are computed inside each block
instead while its weights stream (``weights_streamed``).
"""

from __future__ import annotations

import torch

from .tensorfiles import CheckpointError


class MemorySource:
    """Tensors kept in CPU memory (pinned when they go to a GPU, so copies overlap compute)."""

    def __init__(self, tensors: dict[str, torch.Tensor], pin: bool = False):
        self.tensors = {k: (v.pin_memory() if pin else v) for k, v in tensors.items()}

    def shape(self, name: str) -> tuple[int, ...] | None:
        t = self.tensors.get(name)
        return None if t is None else tuple(t.shape)

    def get(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def place_buffers(model: torch.nn.Module, get, device, dtype: torch.dtype) -> None:
    """``model``'s buffers (a UNet's are a few KB: the text whitening) set from ``get(name)`` and kept on
    ``device``, floating ones in ``dtype``: buffers stay resident while the parameters stream."""
    for name, _ in list(model.named_buffers()):
        owner, _, attr = name.rpartition(".")
        t = get(name)
        model.get_submodule(owner).register_buffer(attr, t.to(device, dtype if t.is_floating_point() else t.dtype))


def block_units(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The streaming units of ``model``: each child that holds parameters, looking through ModuleLists (a UNet's
    input/middle/output blocks are lists of layers: each layer is a unit). The model's own direct parameters are
    not in any unit and stay resident."""
    out = []

    def visit(prefix: str, module: torch.nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)):
                visit(full + ".", child)
            elif any(True for _ in child.parameters()):
                out.append((full, child))
    visit("", model)
    return out


class WeightStreamer:
    """Streams ``model``'s parameters to ``device`` unit by unit (``units``: :func:`block_units`, or
    ``[("", model)]`` for a whole model at a time) from ``source``, in ``dtype``."""

    def __init__(self, model: torch.nn.Module, source, device: str | torch.device, dtype: torch.dtype,
                 units: list[tuple[str, torch.nn.Module]] | None = None, window: int = 1):
        self.model, self.source, self.device, self.dtype = model, source, torch.device(device), dtype
        self.units = block_units(model) if units is None else units
        self.window = window
        params = [self._unit_params(prefix, unit) for prefix, unit in self.units]
        self._check_source(params)
        self.shapes = [[tuple(p.shape) for _, p in unit] for unit in params]
        # (name, owning module, attribute): each load puts new Parameters there and each release empty ones, so a
        # backward pass still holds the weights it saved (layout guidance's gradient) after their unit is released
        self.params = [[(n, *self._owner(n)) for n, _ in unit] for unit in params]
        self.loaded: list[int] = []  # units on the device, oldest first
        self.order: list[int] = []  # units in the order the first forward used them (what prefetch follows)
        self._staged: dict[int, list[torch.Tensor]] = {}
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self._hooks = [m.register_forward_pre_hook(self._pre_hook(i)) for i, (_, unit) in enumerate(self.units)
                       for m in unit.modules()]
        for i in range(len(self.units)):
            self._release(i)
        model.weights_streamed = True

    def _unit_params(self, prefix: str, unit: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        return [(f"{prefix}.{n}" if prefix else n, p) for n, p in unit.named_parameters()]

    def _owner(self, name: str) -> tuple[torch.nn.Module, str]:
        owner, _, attr = name.rpartition(".")
        return self.model.get_submodule(owner), attr

    def _check_source(self, params: list) -> None:
        """Every parameter in the source, with its number of elements (IF's files keep some linear weights as
        1x1 convs: [C_out, C_in, 1] for a [C_out, C_in] parameter, reshaped as they load)."""
        def numel(shape):
            return None if shape is None else torch.Size(shape).numel()
        bad = [(n, tuple(p.shape), self.source.shape(n)) for unit in params for n, p in unit
               if numel(self.source.shape(n)) != p.numel()]
        if bad:
            name, want, got = bad[0]
            raise CheckpointError(f"cannot stream {name}: the weights source has {got or 'no such tensor'}, the model "
                                  f"wants {want} ({len(bad)} mismatch(es)): load the model from the file it was saved "
                                  "in")

    def _pre_hook(self, i: int):
        def hook(_module, _args):
            if i not in self.loaded:
                self.load(i)
        return hook

    def _fetch(self, i: int) -> list[torch.Tensor]:
        """Unit i's tensors on the device in the target dtype (a prefetched copy when there is one)."""
        if i in self._staged:
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            staged = self._staged.pop(i)
            for t in staged:  # made on the side stream, read on this one: not reused before this one is done
                t.record_stream(current)
            return staged
        return self._copy(i)

    def _copy(self, i: int) -> list[torch.Tensor]:
        return [self.source.get(n).reshape(shape).to(self.device, self.dtype, non_blocking=True)
                for (n, _, _), shape in zip(self.params[i], self.shapes[i])]

    def load(self, i: int) -> None:
        for (_, module, attr), t in zip(self.params[i], self._fetch(i)):
            module._parameters[attr] = torch.nn.Parameter(t, requires_grad=False)
        self.loaded.append(i)
        if i not in self.order:
            self.order.append(i)
        while len(self.loaded) > self.window:
            self._release(self.loaded.pop(0))
        self._prefetch_after(i)

    def _prefetch_after(self, i: int) -> None:
        """On a GPU: copy the unit that ran after this one last time, on a side stream, while this one runs."""
        if self._stream is None or self._staged:
            return
        k = self.order.index(i) + 1
        if k >= len(self.order) or self.order[k] in self.loaded:
            return
        nxt = self.order[k]
        with torch.cuda.stream(self._stream):
            self._staged[nxt] = self._copy(nxt)

    def _release(self, i: int) -> None:
        empty = torch.empty(0, device=self.device, dtype=self.dtype)
        for _, module, attr in self.params[i]:
            module._parameters[attr] = torch.nn.Parameter(empty, requires_grad=False)
        if i in self.loaded:
            self.loaded.remove(i)

    def release_all(self) -> None:
        """Every unit off the device (the end of a stage)."""
        for i in list(self.loaded):
            self._release(i)
        self._staged.clear()
