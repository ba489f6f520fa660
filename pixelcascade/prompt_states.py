"""Prompt states as files (diffusers' ``prompt_embeds`` workflow): encode the prompts once, then generate with no
text encoder in memory at all.

A states file (.safetensors) holds, for every text it was made from (the prompts, any negative prompts, and the
empty prompt that classifier-free guidance needs): the encoder's states [N, L, D] (bf16 where that is lossless,
else fp32), the token mask, and in its metadata the encoder's name, width and window, the texts, and each text's
token spans (what layout guidance needs from the tokenizer). :class:`StatesEncoder` reads it back as a text
encoder: a cascade built on it runs exactly as it would with the encoder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .tensorfiles import CheckpointError, read_tensors, write_safetensors
from .text.encoder import TextEncoderError, check_prompts

FORMAT = "pixelcascade-prompt-states-1"


def write_prompt_states(encoder, prompts: list[str], dest: str | Path,
                        negative_prompts: list[str] | None = None) -> Path:
    """Encode ``prompts`` (and ``negative_prompts``) with ``encoder`` into ``dest`` (written atomically)."""
    prompts = check_prompts(prompts)
    negatives = [t for t in negative_prompts or [] if t.strip()]
    texts = list(dict.fromkeys(prompts + negatives))
    emb, mask = encoder(texts)
    empty, empty_mask = encoder.empty(1)
    states = torch.cat([emb.float(), empty.float()]).cpu()
    masks = torch.cat([mask, empty_mask]).to(torch.uint8).cpu()
    lossless_bf16 = torch.equal(states.bfloat16().float(), states)  # a bf16 encoder's states: half the file
    prepared = encoder.prepare(texts + [""]) if hasattr(encoder, "prepare") else texts + [""]
    spans = [encoder.token_offsets(t) for t in prepared] if hasattr(encoder, "token_offsets") else None
    meta = {"format": FORMAT, "encoder_name": encoder.name, "encoder_dim": str(encoder.dim),
            "max_length": str(encoder.max_length), "texts": json.dumps(texts + [""]),
            "prompts": json.dumps(prompts), "prepared": json.dumps(prepared),
            "token_spans": json.dumps(spans)}
    write_safetensors(dest, {"states": states.bfloat16() if lossless_bf16 else states, "mask": masks}, meta)
    return Path(dest)


def base_encoder_name(name: str) -> str:
    """An encoder's name without its weights' quantization (int8 / nf4 states stand in for bf16 ones)."""
    return re.sub(r"-(int8|nf4)$", "", name or "")


class StatesEncoder:
    """A states file read back as a text encoder: ``__call__(texts)``, ``empty(n)``, ``prepare`` and
    ``token_offsets`` answer from the file, for the texts it holds (any other text: one error naming the fix)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CheckpointError(f"no prompt-states file at {self.path}: make one with "
                                  "`pixelcascade encode \"PROMPT\" ... -o states.safetensors`")
        tensors, meta = read_tensors(self.path)
        if meta.get("format") != FORMAT or "states" not in tensors:
            raise CheckpointError(f"{self.path} is not a prompt-states file: make one with "
                                  "`pixelcascade encode \"PROMPT\" ... -o states.safetensors`")
        self.name = meta["encoder_name"]
        self.dim, self.max_length = int(meta["encoder_dim"]), int(meta["max_length"])
        self.texts = json.loads(meta["texts"])
        self.prompts = json.loads(meta["prompts"])
        self._prepared = dict(zip(self.texts, json.loads(meta["prepared"])))
        spans = json.loads(meta["token_spans"])
        self._spans = None if spans is None else {p: [tuple(s) for s in sp]
                                                  for p, sp in zip(self._prepared.values(), spans)}
        self._row = {t: i for i, t in enumerate(self.texts)}
        self.states, self.mask = tensors["states"].float(), tensors["mask"].long()
        self.device = "cpu"

    def _rows(self, texts: list[str]) -> list[int]:
        missing = [t for t in texts if t not in self._row]
        if missing:
            raise TextEncoderError(f"{missing[0]!r} is not in {self.path} (it holds {len(self.prompts)} prompt(s), "
                                   f"e.g. {self.prompts[0]!r}): encode it with `pixelcascade encode`, or leave "
                                   "--prompt-states out to use the text encoder")
        return [self._row[t] for t in texts]

    def __call__(self, texts: list[str], allow_empty: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if not allow_empty:
            texts = check_prompts(texts)
        rows = self._rows(list(texts))
        return self.states[rows], self.mask[rows]

    def empty(self, n: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        emb, mask = self([""], allow_empty=True)
        return emb.expand(n, -1, -1), mask.expand(n, -1)

    def prepare(self, texts: list[str]) -> list[str]:
        self._rows(list(texts))
        return [self._prepared[t] for t in texts]

    def token_offsets(self, prepared: str) -> list[tuple[int, int]]:
        if self._spans is None or prepared not in self._spans:
            return [(0, 0)] * self.max_length  # no spans stored: layout guidance finds no nouns
        return self._spans[prepared]

    def to(self, device) -> StatesEncoder:
        return self  # states move with the images they condition

    def check_fits(self, stage_meta: dict, encoder_dim: int, model: str) -> None:
        """Refuse states the model cannot read: another width, window or encoder than it was trained with."""
        trained = stage_meta.get("encoder_name")
        if self.dim != encoder_dim or (trained and base_encoder_name(trained) != base_encoder_name(self.name)):
            raise TextEncoderError(f"{self.path} holds states of {self.name} ({self.dim}-d), but {model} reads "
                                   f"{trained or 'another encoder'} ({encoder_dim}-d): encode the prompts for this "
                                   f"model: pixelcascade encode \"PROMPT\" --model {model} -o FILE")
        want = int(stage_meta.get("text_max_length", self.max_length))
        if want != self.max_length:
            raise TextEncoderError(f"{self.path} holds {self.max_length}-token states, but {model} reads {want} "
                                   f"tokens: encode the prompts for this model (pixelcascade encode --model {model})")
