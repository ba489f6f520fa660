"""Adapters on our UNet: IF's attention projections are nn.Linear modules called through their forward, so peft's
LoRA wraps them and changes what the model computes, and a LoRA trains."""

from __future__ import annotations

import pytest
import torch
from conftest import randomize, tiny_cfg

from pixelcascade.models.unet import build_unet

peft = pytest.importorskip("peft")

TARGETS = ["qkv", "encoder_kv", "proj_out"]


def _with_lora(model, init=True):
    cfg = peft.LoraConfig(r=4, lora_alpha=4, target_modules=TARGETS, init_lora_weights=init)
    return peft.inject_adapter_in_model(cfg, model)


def _inputs(super_res=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, te = torch.randn(2, 3, 32, 32, generator=g), torch.randn(2, 9, 48, generator=g)
    kw = {"low_res": torch.randn(2, 3, 32, 32, generator=g), "aug_t": torch.tensor([0, 100])} if super_res else {}
    return x, torch.tensor([3.0, 300.0]), te, kw


@pytest.mark.parametrize("super_res", [False, True])
def test_lora_on_attention_changes_the_output_and_scale_zero_is_the_base(super_res):
    base = randomize(build_unet(tiny_cfg(super_res)).eval())
    x, t, te, kw = _inputs(super_res)
    with torch.no_grad():
        want = base(x, t, te, **kw)
    model = _with_lora(base, init=False)  # random A and B: the adapter is not the identity
    wrapped = [n for n, m in model.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert wrapped and all(n.rsplit(".", 1)[-1] in TARGETS for n in wrapped)
    assert len(wrapped) == 3 * sum(1 for n, _ in model.named_modules() if n.endswith(".encoder_kv"))
    with torch.no_grad():
        got = model(x, t, te, **kw)
        assert (got - want).abs().max() > 1e-5  # the adapter is on the computation path (equal would be 0 exactly)
        for m in model.modules():
            if isinstance(m, peft.tuners.lora.LoraLayer):
                m.set_scale("default", 0.0)
        assert torch.equal(model(x, t, te, **kw), want)


def test_state_dict_keeps_if_key_names_and_conv_shapes():
    """Without adapters the projections save and load in IF's Conv1d shape [out, in, 1], under IF's names."""
    model = build_unet(tiny_cfg())
    sd = model.state_dict()
    keys = [k for k in sd if k.endswith(("qkv.weight", "encoder_kv.weight", "proj_out.weight"))]
    assert keys and all(sd[k].ndim == 3 and sd[k].shape[-1] == 1 for k in keys)
    other = build_unet(tiny_cfg())
    other.load_state_dict(sd)  # strict: the same names and shapes
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_a_lora_trains_while_the_base_stays_frozen():
    """A LoRA (B = 0 at the start: the base model exactly) learns to match the same UNet under another, random LoRA:
    the loss falls by more than half and no base weight moves."""
    torch.manual_seed(0)
    base = randomize(build_unet(tiny_cfg()).eval())
    x, t, te, _ = _inputs()
    teacher = _with_lora(randomize(build_unet(tiny_cfg()).eval()), init=False)  # the same seeded base weights
    with torch.no_grad():
        target = teacher(x, t, te)
    model = _with_lora(base)
    for n, p in model.named_parameters():
        p.requires_grad = "lora_" in n
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(40):
        loss = torch.nn.functional.mse_loss(model(x, t, te), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 0 and losses[-1] < 0.5 * losses[0], losses[::8]
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
