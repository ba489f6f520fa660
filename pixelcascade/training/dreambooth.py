"""DreamBooth (data.world=dreambooth): a few images of one subject under an instance prompt ("a photo of sks
dog"), and, for prior preservation, images of its class ("a photo of a dog") that the model being fine-tuned
draws itself before training, so that it keeps what the class looks like.

The class images are generated once with the base model (train.init_from; for a super-resolution stage, the
stage I of data.dreambooth.class_model drawing the low-res image), seeds 0, 1, ..., and cached as PNG + JSON
sidecar under the cache: an interrupted generation continues where it stopped, and another run with the same
base, prompt and size reuses them. Each training batch draws class examples with probability w / (1 + w) for
data.dreambooth.prior_weight w (DreamBooth's prior-preservation weight, as an expected share of the loss).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..config import RunConfig
from ..data.worlds import DatasetError, WorldSplit
from ..images import center_crop_resize, list_images, read_rgb, save_png


def instance_images(cfg: RunConfig) -> np.ndarray:
    """The subject's images from data.path, centre-cropped and resized to the stage's size."""
    folder = Path(cfg.data.path).expanduser()
    paths = list_images(folder) if folder.is_dir() else []
    if not paths:
        raise DatasetError(f"data.path={folder}: no images there; DreamBooth needs a folder of 3 to 20 images "
                           "of the subject")
    size = cfg.data.image_size
    return np.stack([center_crop_resize(read_rgb(p), size) for p in paths])


def class_folder(cfg: RunConfig, cache: Path) -> Path:
    db = cfg.data.dreambooth
    key = json.dumps([cfg.train.init_from, db.class_model, db.class_prompt, cfg.data.image_size], sort_keys=True)
    return cache / "dreambooth" / hashlib.sha256(key.encode()).hexdigest()[:16]


def class_images(cfg: RunConfig, cache: Path, progress: bool = True, batch_size: int = 8) -> np.ndarray:
    """data.dreambooth.class_images images of the class prompt by the base model, made once (resumable)."""
    db = cfg.data.dreambooth
    folder = class_folder(cfg, cache)
    folder.mkdir(parents=True, exist_ok=True)
    want = [folder / f"{i:05d}.png" for i in range(db.class_images)]
    todo = [i for i, p in enumerate(want) if not p.is_file()]
    if todo:
        _generate(cfg, folder, todo, progress, batch_size)
    return np.stack([read_rgb(p) for p in want])


def _generate(cfg: RunConfig, folder: Path, todo: list[int], progress: bool, batch_size: int) -> None:
    from ..api import ModelError, load
    from ..pipeline import to_uint8
    from ..utils import resolve_device
    db = cfg.data.dreambooth
    model = f"{db.class_model},{cfg.train.init_from}" if cfg.unet.super_res else cfg.train.init_from
    try:
        cascade = load(model, text_encoder=cfg.text_encoder, device=str(resolve_device(cfg.train.device)))
    except ModelError as e:
        raise DatasetError(f"DreamBooth's class images are drawn by the base model and it cannot be loaded: {e}. "
                           "Give train.init_from a model file or IF folder (a run's checkpoint.pt: export it "
                           "first) and, for a super-resolution stage, data.dreambooth.class_model its stage I"
                           ) from None
    chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
    if progress:
        from tqdm import tqdm
        chunks = tqdm(chunks, desc=f"class images ({db.class_prompt!r})", unit="batch")
    for seeds in chunks:
        images = to_uint8(cascade.run([db.class_prompt] * len(seeds), seeds)[-1])
        for seed, img in zip(seeds, images):
            if img.shape[0] != cfg.data.image_size:
                img = center_crop_resize(img, cfg.data.image_size)
            save_png(img, folder / f"{seed:05d}.png", {"prompt": db.class_prompt, "seed": seed, "model": model,
                                                       "purpose": "DreamBooth prior preservation"})
    del cascade  # the drawing models leave the device before training starts
    import torch
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def dreambooth_splits(cfg: RunConfig, cache: Path, progress: bool = True) -> tuple[WorldSplit, WorldSplit]:
    """(training, validation): the subject's images under the instance prompt, repeated so that they are
    1 / (1 + w) of the examples, and the class images under the class prompt; validation: the subject's images."""
    db = cfg.data.dreambooth
    inst = instance_images(cfg)
    val = WorldSplit(inst, [[db.instance_prompt] for _ in inst])
    if not db.class_prompt:
        return WorldSplit(inst, [[db.instance_prompt] for _ in inst]), val
    cls = class_images(cfg, cache, progress)
    repeat = max(1, round(len(cls) / (db.prior_weight * len(inst))))  # instance examples : class = 1 : w
    images = np.concatenate([inst, cls])
    captions = [[db.instance_prompt] * repeat for _ in inst] + [[db.class_prompt] for _ in cls]
    return WorldSplit(images, captions, info={"class_folder": str(class_folder(cfg, cache))}), val


def dreambooth_recipe(cfg: RunConfig, train: WorldSplit, val: WorldSplit) -> str:
    db = cfg.data.dreambooth
    text = (f"dreambooth: {len(val)} images of {db.instance_prompt!r} from {cfg.data.path}, centre-cropped and "
            f"resized to {cfg.data.image_size} px")
    if db.class_prompt:
        text += (f"; prior preservation: {db.class_images} images of {db.class_prompt!r} drawn by the base model "
                 f"(seeds 0-{db.class_images - 1}; {train.info.get('class_folder')}), weight {db.prior_weight:g}")
    return text
