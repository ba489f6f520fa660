"""What every benchmark here records: the machine (speeds differ by CPU: a figure without it means little) and
its rows, appended as JSON lines."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path


def cpu() -> dict:
    """The CPU's model name and the instruction sets that decide half-precision speed."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.processor() or platform.machine())
    return {"cpu": name, "avx512_bf16": "avx512_bf16" in info, "avx2": " avx2" in info,
            "date": time.strftime("%Y-%m-%d")}


def cpu_name() -> str:
    c = cpu()
    return c["cpu"] + (", AVX512-BF16" if c["avx512_bf16"] else ", AVX2" if c["avx2"] else "")


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def save_random_t5(path: str | Path, config: dict, device: str = "cpu", dtype=None) -> Path:
    """A random T5 encoder saved like a real local folder, with a word-level tokenizer of a dozen words (the
    benchmarks' and tests' stand-in for t5-v1_1-xxl, which cannot be downloaded here). ``config``: T5Config's
    fields. The caller seeds torch."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    words = ["<pad>", "</s>", "<unk>"] + "a red circle blue square left of the and two three".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                        unk_token="<unk>").save_pretrained(path)
    with torch.device(device):
        model = transformers.T5EncoderModel(transformers.T5Config(**{"vocab_size": len(words), **config}))
    (model if dtype is None else model.to(dtype)).save_pretrained(path)
    return Path(path)
