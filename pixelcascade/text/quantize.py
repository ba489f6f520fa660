"""Weight-only quantization of a text encoder's linear layers, through torchao (pure PyTorch paths: CPU and CUDA).

* ``int8``: one int8 per weight and one scale per output row (torchao's ``Int8WeightOnlyConfig``): half of bf16.
* ``nf4``: QLoRA's 4-bit NormalFloat, one scale per 64 weights (torchao's ``to_nf4``): about a quarter of bf16.

Only ``nn.Linear`` weights are quantized (in T5 they are all but the token embedding and the norms); activations
stay in the encoder's dtype (bf16), so the states differ from bf16's by the weights' rounding alone
(docs/memory.md has the measured error).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import PixelcascadeError

if TYPE_CHECKING:
    import torch

# (torch is imported inside the functions: the command line reads TEXT_DTYPES before it needs torch)

# the text encoder's weights: what --text-encoder-dtype accepts
TEXT_DTYPES = ("fp32", "bf16", "int8", "nf4")
QUANTIZED = ("int8", "nf4")
NF4_BLOCK = 64  # weights per NF4 scale (QLoRA's and bitsandbytes' default)


class QuantizationError(PixelcascadeError, ValueError):
    """A quantization mode that cannot be used here, with the fix in the message."""


def compute_dtype(mode: str) -> torch.dtype:
    """The dtype the encoder computes in: fp32 for fp32, else bf16 (the quantized modes dequantize to bf16)."""
    import torch
    return torch.float32 if mode == "fp32" else torch.bfloat16


def import_torchao():
    """torchao, quiet: its loader logs every GPU kernel library it cannot load on a CPU machine."""
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import torchao.quantization as tq
    except ImportError:
        raise QuantizationError("int8 and nf4 text encoders need torchao: pip install torchao "
                                "(or use --text-encoder-dtype bf16)") from None
    return tq


def quantize_linear(linear: torch.nn.Linear, mode: str) -> torch.nn.Linear:
    """``linear``'s weight quantized in place (``mode``: int8 or nf4); its bias stays as it is."""
    import torch
    tq = import_torchao()
    if mode == "int8":
        tq.quantize_(linear, tq.Int8WeightOnlyConfig())
    elif mode == "nf4":
        w = linear.weight.detach().to(torch.bfloat16)
        if w.numel() % NF4_BLOCK:
            raise QuantizationError(f"a {tuple(w.shape)} weight cannot be split into blocks of {NF4_BLOCK} for nf4: "
                                    "use --text-encoder-dtype int8")
        linear.weight = torch.nn.Parameter(tq.to_nf4(w, block_size=NF4_BLOCK), requires_grad=False)
    else:
        raise QuantizationError(f"cannot quantize to {mode!r}: choose int8 or nf4")
    return linear


def quantize_linears(model: torch.nn.Module, mode: str) -> torch.nn.Module:
    """Every ``nn.Linear`` of ``model`` quantized in place."""
    import torch
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            quantize_linear(module, mode)
    return model


def bytes_per_weight(mode: str) -> float:
    """Storage per linear weight, scales included: what the memory estimate counts."""
    return {"fp32": 4.0, "bf16": 2.0, "int8": 1.0, "nf4": 0.5 + 2.0 / NF4_BLOCK}[mode]
