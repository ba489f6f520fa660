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
