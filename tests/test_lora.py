"""Adapters on our UNet: IF's attention projections are nn.Linear modules called through their forward, so peft's
LoRA wraps them and changes what the model computes, and a LoRA trains."""

from __future__ import annotations

import dataclasses

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


# -- LoRA fine-tunes: train.lora, the adapter file, --lora and export --merge-lora -------------------------------


def _lora_run(tmp_path, base, folder, steps, **lora):
    from test_training import _cfg, _data

    from pixelcascade.config import LoraConfig
    from pixelcascade.training.loop import Trainer
    cfg = _cfg(init_from=str(base), lora=LoraConfig(**{"rank": 4, **lora}), lr=1e-2)
    trainer = Trainer(cfg, _data(), tmp_path / folder, progress=False)
    trainer.fit(max_steps=steps)
    return trainer


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny stage I trained for 3 steps: its EMA file is the base the adapters learn on."""
    from test_training import _cfg, _data

    from pixelcascade.training.loop import Trainer
    folder = tmp_path_factory.mktemp("base")
    Trainer(_cfg(), _data(), folder, progress=False).fit(max_steps=3)
    return folder / "ema.safetensors"


def test_a_lora_run_trains_the_adapter_alone_saves_it_small_and_resumes_exactly(tmp_path, base_model):
    from pixelcascade.tensorfiles import read_tensors
    from pixelcascade.training.checkpoint import load_checkpoint
    base, _ = read_tensors(base_model)
    a = _lora_run(tmp_path, base_model, "a", 6)
    trained = {n for n, p in a.model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n for n in trained)
    plain = {k.replace(".base_layer", ""): v for k, v in a.model.state_dict().items() if ".lora_" not in k}
    assert all(torch.equal(plain[k], base[k].float()) for k in base)  # the base never moved
    state = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert set(state["model"]) == trained and set(state["ema"]["model"]) == trained  # no copy of the base
    adapter, meta = read_tensors(tmp_path / "a" / "lora.safetensors")
    assert adapter and all(".lora_A." in k or ".lora_B." in k for k in adapter)
    assert not (tmp_path / "a" / "ema.safetensors").exists()
    assert any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)  # it learned something
    b = _lora_run(tmp_path, base_model, "b", 3)
    del b
    b = _lora_run(tmp_path, base_model, "b", 6)  # resumed from step 3
    assert b.step == 6
    for (k, va), vb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(va, vb), k
    assert all(torch.equal(v, read_tensors(tmp_path / "b" / "lora.safetensors")[0][k]) for k, v in adapter.items())


def test_the_learned_variance_keeps_training_under_lora(tmp_path, base_model):
    """The hybrid loss stays: its variational term alone sends gradient into the adapter."""
    from pixelcascade.diffusion.losses import diffusion_loss
    t = _lora_run(tmp_path, base_model, "v", 2)
    g = torch.Generator().manual_seed(0)
    x0, text = t.data.batch(torch.arange(4), torch.zeros(4, dtype=torch.bool))
    noise, ts = torch.randn(x0.shape, generator=g), torch.tensor([10, 200, 500, 900])
    x_t = t.schedule.q_sample(x0, ts, noise)
    terms = diffusion_loss(t.model(x_t, ts.float(), text), x0, x_t, ts, noise, t.schedule, t.cfg.diffusion)
    terms["vb"].mean().backward()
    grads = [p.grad for n, p in t.model.named_parameters() if p.requires_grad]
    assert terms["vb"].mean() > 0 and any(gr is not None and gr.abs().sum() > 0 for gr in grads)


@pytest.mark.parametrize("targets", ["attention+resblocks", "*.proj_out"])  # (the others train "attention")
def test_an_adapter_merged_at_load_or_by_export_gives_the_runs_model(tmp_path, base_model, targets):
    from pixelcascade.api import _merge_loras
    from pixelcascade.cli import main
    from pixelcascade.weights import load_stage
    run = _lora_run(tmp_path, base_model, "r", 4, targets=targets)
    x, t, _, _ = _inputs()
    te = torch.randn(2, 6, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = run.ema.model(x[:, :, :16, :16], t, te)
        base_out = load_stage(base_model).unet(x[:, :, :16, :16], t, te)
    adapter = tmp_path / "r" / "lora.safetensors"
    for scale, expect in ((1.0, want), (0.0, base_out)):
        stage = load_stage(base_model)
        _merge_loras([stage], [f"{adapter}:{scale}"])
        assert not lora_wrapped(stage.unet)  # merged: the plain layers, IF's key names
        with torch.no_grad():
            torch.testing.assert_close(stage.unet(x[:, :, :16, :16], t, te), expect, atol=1e-5, rtol=1e-5)
    merged_file = str(tmp_path / "m.safetensors")
    assert main(["export", str(tmp_path / "r"), "--merge-lora", "--dtype", "fp32", "-o", merged_file]) == 0
    merged = load_stage(tmp_path / "m.safetensors")
    assert set(merged.unet.state_dict()) == set(load_stage(base_model).unet.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged.unet(x[:, :, :16, :16], t, te), want, atol=1e-5, rtol=1e-5)
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "a.safetensors")]) == 0  # the adapter, fp16
    assert (tmp_path / "a.safetensors").stat().st_size < 0.2 * base_model.stat().st_size
    assert main(["export", str(base_model), "--merge-lora", f"{tmp_path / 'a.safetensors'}:1", "--dtype", "fp32",
                 "-o", str(tmp_path / "m2.safetensors")]) == 0
    with torch.no_grad():
        torch.testing.assert_close(load_stage(tmp_path / "m2.safetensors").unet(x[:, :, :16, :16], t, te), want,
                                   atol=2e-3, rtol=2e-3)  # the adapter went through fp16


def lora_wrapped(model) -> bool:
    return any(isinstance(m, peft.tuners.lora.LoraLayer) for m in model.modules())


def test_lora_errors_name_the_fix(tmp_path, base_model):
    from pixelcascade.api import ModelError, _merge_loras
    from pixelcascade.config import ConfigError, LoraConfig, TrainConfig
    from pixelcascade.weights import load_stage
    with pytest.raises(ConfigError, match="train.init_from"):
        TrainConfig(lora=LoraConfig(rank=4))
    with pytest.raises(ModelError, match="not a pixelcascade LoRA adapter"):
        _merge_loras([load_stage(base_model)], [str(base_model)])
    _lora_run(tmp_path, base_model, "r", 1)
    other = tmp_path / "other.safetensors"  # a model of another UNet config
    from test_training import _cfg

    from pixelcascade.config import to_json
    from pixelcascade.tensorfiles import write_safetensors
    unet = dataclasses.replace(_cfg().unet, model_channels=64)
    write_safetensors(other, build_unet(unet).state_dict(), {"unet_config": to_json(unet)})
    with pytest.raises(ModelError, match="no stage of this model"):
        _merge_loras([load_stage(other)], [str(tmp_path / "r" / "lora.safetensors")])
    with pytest.raises(Exception, match="picks no Linear or Conv2d"):
        _lora_run(tmp_path, base_model, "bad", 1, targets="*.nothing_here")


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_the_gpu_script_runs_its_two_steps_at_a_tiny_size():
    """scripts/gpu_xl_step.py (IF-I-XL on a GPU) at the tiny preset on the CPU: a LoRA step that trains only the
    adapter and a full step with checkpointing, each reporting its peak memory."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).parents[1] / "scripts" / "gpu_xl_step.py"
    done = subprocess.run([sys.executable, str(script), "--preset", "tiny", "--device", "cpu", "--batch", "2",
                           "--optimizer", "adamw"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["mode"] for r in rows] == ["lora", "full"]
    lora, full = rows
    assert lora["trainable"] < 0.1 * lora["params"] and full["trainable"] == full["params"]
    assert all(r["peak_gb"] > 0 and 0 < r["loss"] < 10 and r["dtype"] == "bfloat16" for r in rows)


def test_every_export_writes_a_model_card_from_its_metadata(tmp_path, base_model):
    """export writes a Markdown card beside the file (an adapter's names its base and how to use it; a diffusers
    folder gets README.md), filled from the metadata: the recipe, the command, the sampling defaults, a licence."""
    from pixelcascade.cli import main
    _lora_run(tmp_path, base_model, "r", 2)
    assert main(["export", str(base_model), "-o", str(tmp_path / "m.safetensors")]) == 0
    card = (tmp_path / "m.md").read_text()
    assert card.startswith("# m\n") and "## Training" in card and "## Licence" in card and "MIT" in card
    assert "smart" in card or "steps" in card
    assert main(["export", str(tmp_path / "r"), "-o", str(tmp_path / "a.safetensors")]) == 0
    adapter_card = (tmp_path / "a.md").read_text()
    assert "LoRA adapter (rank 4" in adapter_card and str(base_model) in adapter_card
    assert main(["export", str(tmp_path / "r"), "--format", "diffusers", "-o", str(tmp_path / "d")]) == 0
    assert "## Sampling defaults" in (tmp_path / "d" / "README.md").read_text()
