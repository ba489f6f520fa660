"""An offline quality measure for emoji models, honest about what it is.

Inception and CLIP cannot be downloaded here, so the emoji model is measured with a small feature extractor
trained here, on the emoji themselves: a conv net that must tell every emoji picture apart (one class per
picture) under the damage a generator does (shifts, rescaling, blur, noise, colour drift). Its 256-d pooled
features give FID/KID against the real emoji (comparable only between models measured with the same extractor
file, never with Inception FIDs), and its normalised embeddings give **retrieval accuracy**: does the generated
image's nearest real emoji carry the prompt's name? Chance is 1 / number of emoji.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..utils import bf16_autocast_pays
from .fid import FeatureExtractor, FIDError


class EmojiNet(nn.Module):
    def __init__(self, num_classes: int, width: int = 32, dim: int = 128):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 8]
        layers = []
        for a, b in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU(),
                       nn.Conv2d(b, b, 3, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1], dim)
        self.classes = nn.Parameter(torch.randn(num_classes, dim) * 0.01)
        self.feature_dim = chans[-1]

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x in [-1, 1], [B, 3, 64, 64] -> pooled features [B, 256]."""
        return self.body(x).mean((2, 3))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.proj(self.pooled(x)), dim=-1)

    def logits(self, x: torch.Tensor, scale: float = 16.0) -> torch.Tensor:
        return scale * self.embed(x) @ F.normalize(self.classes, dim=-1).T


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What a generator does to a picture: shift, rescale, blur, noise, a colour drift. x in [-1, 1]."""
    b, _, h, w = x.shape
    s = 1 + (torch.rand(b, generator=g) - 0.5) * 0.3  # scale 0.85 .. 1.15
    t = (torch.rand(b, 2, generator=g) - 0.5) * 0.25  # shift up to 6% each way
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = 1 / s, 1 / s, t
    grid = F.affine_grid(theta, (b, 3, h, w), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)  # the white background continues
    blur = torch.rand(b, generator=g) < 0.5
    if blur.any():
        low = F.interpolate(F.avg_pool2d(x[blur], 2), size=(h, w), mode="bilinear", align_corners=False)
        x = x.clone()
        x[blur] = low
    x = x + torch.randn(x.shape, generator=g) * (torch.rand(b, 1, 1, 1, generator=g) * 0.15)
    x = x * (1 + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.1) + (torch.rand(b, 3, 1, 1, generator=g) - 0.5) * 0.1
    return x.clamp(-1, 1)


def check_feature_steps(steps: int) -> None:
    """ValueError unless the extractor's run is long enough (OneCycleLR needs a warm-up of 2 steps)."""
    if steps < 10:
        raise ValueError(f"steps={steps}: the extractor trains for at least 10 steps (3,000 by default)")


def train_emoji_features(images: np.ndarray, names: list[str], out: str | Path, steps: int = 3000,
                         batch_size: int = 128, lr: float = 2e-3, seed: int = 0, width: int = 32,
                         progress: bool = True, device: str = "cpu") -> dict:
    """Train EmojiNet to classify each picture (uint8 [N, 64, 64, 3]) under augmentation; save safetensors.

    ``device`` runs the net there (bf16 autocast where the device has native bf16); batches and their
    augmentation are drawn on the CPU from the seeded generator either way, so a run sees the same pictures on
    any device."""
    from ..convert import write_safetensors
    check_feature_steps(steps)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    dev = torch.device(device)
    net = EmojiNet(len(images), width=width).to(dev)
    bf16 = bf16_autocast_pays(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # a warm-up of at least 2 steps: OneCycleLR divides by (warm-up steps - 1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=max(0.1, 2 / steps))
    it = range(steps)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc="emoji features", unit="step")
    acc = 0.0
    for step in it:
        idx = torch.randint(0, len(images), (batch_size,), generator=g)
        batch = augment(x_all[idx], g).to(dev)
        idx = idx.to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            logits = net.logits(batch)
        loss = F.cross_entropy(logits.float(), idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        acc = 0.98 * acc + 0.02 * float((logits.argmax(-1) == idx).float().mean())
        if progress and step % 50 == 0:
            it.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
    meta = {"kind": "emoji-features", "num_classes": str(len(images)), "names": json.dumps(names),
            "steps": str(steps), "seed": str(seed), "input_size": "64", "width": str(width),
            "recipe": f"pixelcascade data emoji-features (steps={steps}, batch={batch_size}, lr={lr}, seed={seed}, "
                      f"device={dev.type})"}
    write_safetensors(out, {k: v.detach().float().cpu().contiguous() for k, v in net.state_dict().items()}, meta)
    return {"train_acc_ema": acc, "path": str(out)}


class EmojiExtractor(FeatureExtractor):
    input_size = 64

    def __init__(self, path: str | Path):
        super().__init__()
        from ..convert import read_tensors
        p = Path(path).expanduser()
        if not p.is_file():
            raise FIDError(f"emoji features {p}: no such file; make it with `pixelcascade data emoji-features -o {p}`")
        sd, meta = read_tensors(p)
        if meta.get("kind") != "emoji-features":
            raise FIDError(f"{p} is not an emoji feature extractor (made by pixelcascade data emoji-features)")
        self.net = EmojiNet(int(meta["num_classes"]), width=int(meta.get("width", 32)))
        self.net.load_state_dict(sd)
        self.net.eval()
        self.names = json.loads(meta["names"])
        self.name = f"emoji-features[{hashlib.sha256(p.read_bytes()).hexdigest()[:12]}]"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [0, 255] -> pooled features (FID/KID)
        return self.net.pooled(x / 127.5 - 1)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        from .fid import clean_resize
        x = torch.from_numpy(np.stack([clean_resize(im, 64) for im in images])).permute(0, 3, 1, 2)
        return self.net.embed(x / 127.5 - 1)


def load_emoji_extractor(path: str) -> EmojiExtractor:
    return EmojiExtractor(path)


def retrieval_accuracy(extractor: EmojiExtractor, gen: np.ndarray, prompts: list[str], real: np.ndarray,
                       real_names: list[list[str]], batch: int = 256) -> dict:
    """Share of generated images whose nearest real emoji (cosine, the extractor's embedding) has the prompt
    among its names; also top-5."""
    ref = torch.cat([extractor.embed(real[i:i + batch]) for i in range(0, len(real), batch)])
    q = torch.cat([extractor.embed(gen[i:i + batch]) for i in range(0, len(gen), batch)])
    top = (q @ ref.T).topk(min(5, len(real)), dim=-1).indices.numpy()
    hit1 = [p in real_names[t[0]] for p, t in zip(prompts, top)]
    hit5 = [any(p in real_names[k] for k in t) for p, t in zip(prompts, top)]
    return {"top1": float(np.mean(hit1)), "top5": float(np.mean(hit5)), "n": len(prompts),
            "chance_top1": 1 / len(real), "per_prompt": [{"prompt": p, "top1": bool(h)} for p, h in zip(prompts, hit1)]}


def reference_emoji(cache: Path | None = None, progress: bool = True):
    """Every curated emoji picture at 64 px (training then held-out), with its caption lists:
    (images, train captions, held-out captions). What the extractor learns and the evaluation retrieves from."""
    from ..config import DataConfig
    from ..training.run import default_cache_dir, emoji_images
    cache = cache or default_cache_dir()
    dc = DataConfig(world="emoji", image_size=64, num_images=0, seed=0)
    tr_img, tr_caps = emoji_images(dc, cache, progress)
    ho_img, ho_caps = emoji_images(dc, cache, progress, split="heldout")
    return np.concatenate([tr_img, ho_img]), tr_caps, ho_caps


def evaluate_emoji(cascade, extractor: EmojiExtractor, *, cache: Path | None = None, per_split: int = 100,
                   seed: int = 0, batch_size: int = 32, num_stages: int | None = None, settings=None,
                   out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Held-out and training captions (English names, ``per_split`` of each, seeded) -> images -> retrieval
    accuracy against every real emoji, and FID/KID of the images against the real emoji (extractor features)."""
    from PIL import Image

    from ..pipeline import to_uint8
    from .fid import Stats, extract_features, fid_from_stats, kernel_distance
    real, tr_caps, ho_caps = reference_emoji(cache, progress)
    real_names = [[c[0]] + [n for n in c[1:] if n != c[0]] for c in tr_caps] + ho_caps
    rng = np.random.default_rng(seed)
    picks = {"heldout": [ho_caps[i][0] for i in rng.choice(len(ho_caps), min(per_split, len(ho_caps)), False)],
             "train": [tr_caps[i][0] for i in rng.choice(len(tr_caps), min(per_split, len(tr_caps)), False)]}
    n = num_stages or len(cascade.stages)
    report, sheets = {}, {}
    real_feats = extract_features(list(real), extractor)
    for split, prompts in picks.items():
        imgs = []
        it = range(0, len(prompts), batch_size)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, desc=f"emoji eval ({split})", unit="batch")
        for s in it:
            ps = prompts[s:s + batch_size]
            out = cascade(ps, list(range(s, s + len(ps))), settings=settings, num_stages=n)[-1]
            imgs.extend(to_uint8(out))
        gen = np.stack([np.asarray(Image.fromarray(im).resize((64, 64), Image.BICUBIC)) if im.shape[0] != 64 else im
                        for im in imgs])
        r = retrieval_accuracy(extractor, gen, prompts, real, real_names)
        gf = extract_features(list(gen), extractor)
        a, b = Stats.from_features(gf, extractor.name), Stats.from_features(real_feats, extractor.name)
        r.update(fid=fid_from_stats(a, b), kid=kernel_distance(gf, real_feats, num_subsets=20))
        report[split] = r
        sheets[split] = (np.stack(imgs[:32]), prompts[:32])
    report["extractor"] = extractor.name
    report["num_real"] = len(real)
    if out_dir is not None:
        from ..utils import atomic_write_text
        from .sheets import contact_sheet
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "report.json", json.dumps(report, indent=2, ensure_ascii=False))
        for split, (ims, caps) in sheets.items():
            contact_sheet(ims, caps, out / f"contact_sheet_{split}.png", scale=max(1, 128 // ims.shape[1]),
                          title=f"{split} captions (top-1 retrieval {report[split]['top1']:.2f})")
    return report
