"""CLIP score as IF reports it: the mean cosine between CLIP ViT-B/32 image and caption embeddings (not x100).

Weights come from a local folder in the Hugging Face layout (``openai/clip-vit-base-patch32`` saved with
``save_pretrained``, or downloaded elsewhere and copied here). Preprocessing is CLIP's own: the short side
resized to 224 (bicubic), centre crop, CLIP mean/std; captions tokenised and truncated to 77 tokens.
torchmetrics' ``CLIPScore`` reports 100x this number (tests/test_clip_score.py checks the two agree).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import PixelcascadeError


class CLIPScoreError(PixelcascadeError, ValueError):
    pass


class CLIPScorer:
    def __init__(self, path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
        from ..utils import import_transformers
        import_transformers()
        from transformers import CLIPModel, CLIPTokenizer
        try:  # transformers >= 5: the PIL processor (the default one needs torchvision)
            from transformers import CLIPImageProcessorPil as CLIPImageProcessor
        except ImportError:
            from transformers import CLIPImageProcessor
        p = Path(path).expanduser()
        if not (p / "config.json").is_file():
            raise CLIPScoreError(f"--clip {p}: no CLIP model folder there (needs config.json and weights); save "
                                 "openai/clip-vit-base-patch32 with save_pretrained on a machine with internet and "
                                 "pass that folder")
        try:
            self.model = CLIPModel.from_pretrained(str(p), local_files_only=True, torch_dtype=dtype).to(device).eval()
            self.image_processor = CLIPImageProcessor.from_pretrained(str(p), local_files_only=True)
            self.tokenizer = CLIPTokenizer.from_pretrained(str(p), local_files_only=True)
        except Exception as e:  # whatever transformers raises for a broken folder: one line naming --clip
            from ..tensorfiles import folder_unreadable
            raise CLIPScoreError(f"--clip: {folder_unreadable(p, e, 'a CLIP model')}") from None
        self.max_length = self.model.config.text_config.max_position_embeddings
        self.device, self.dtype = device, dtype
        self.name = f"clip[{p.name}]"

    @staticmethod
    def _features(out) -> torch.Tensor:
        # transformers >= 5 returns a model output whose pooler_output is the projected embedding
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def image_embeddings(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        px = self.image_processor(images=[np.asarray(im) for im in images], return_tensors="pt")["pixel_values"]
        f = self._features(self.model.get_image_features(pixel_values=px.to(self.device, self.dtype))).float()
        return f / f.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def text_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        tok = self.tokenizer(list(captions), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        f = self._features(self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                        attention_mask=tok["attention_mask"].to(self.device)))
        f = f.float()
        return f / f.norm(dim=-1, keepdim=True)

    def scores(self, images: Sequence[np.ndarray], captions: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Per-image cosine similarity with its caption."""
        if len(images) != len(captions):
            raise CLIPScoreError(f"{len(images)} images but {len(captions)} captions")
        out = []
        for s in range(0, len(images), batch_size):
            a = self.image_embeddings(images[s:s + batch_size])
            b = self.text_embeddings(captions[s:s + batch_size])
            out.append((a * b).sum(-1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0)
