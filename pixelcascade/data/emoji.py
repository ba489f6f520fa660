"""The emoji dataset: every emoji of Debian's Noto Color Emoji font rendered with Pillow, captioned from the
``emoji`` package (its English name, its aliases and its names in the other languages it carries).

Skin-tone and gender variants are separate emoji with their own names ("thumbs up: medium skin tone"), kept
as such. Blank glyphs (nothing drawn, or the font's "missing glyph" box) are dropped and counted. Images are
composited on white and centred on a square canvas. The output is webdataset shards + ``manifest.parquet``.

Held-out captions: a seeded 5% of the emoji (by their English name) are marked ``split="heldout"``; training
sees none of their captions, the emoji model is scored on them.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np

from ..errors import PixelcascadeError
from .formats import Record, ShardWriter

FONT_CANDIDATES = ("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
                   "~/.cache/pixelcascade/fonts/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
STRIKE = 109  # the size of Noto Color Emoji's bitmap strike (CBDT): 136x128 px glyphs


class EmojiError(PixelcascadeError, RuntimeError):
    pass


def find_font(path: str | None = None) -> Path:
    for cand in ([path] if path else []) + list(FONT_CANDIDATES):
        p = Path(cand).expanduser()
        if p.is_file():
            return p
    raise EmojiError("Noto Color Emoji not found: install Debian's fonts-noto-color-emoji (scripts/setup.sh does, "
                     "or unpacks it into ~/.cache/pixelcascade/fonts without root), or pass --font PATH")


def clean_name(name: str) -> str:
    """':thumbs_up_medium_skin_tone:' -> 'thumbs up medium skin tone'."""
    return re.sub(r"\s+", " ", name.strip(":").replace("_", " ")).strip()


def emoji_entries(languages: bool = True) -> list[dict]:
    """Fully-qualified emoji with their names: [{"char", "name", "aliases", "names": {lang: name}}]."""
    import emoji
    if languages:
        emoji.config.load_language(list(emoji.LANGUAGES))
    out = []
    for ch, d in emoji.EMOJI_DATA.items():
        if d.get("status") != emoji.STATUS["fully_qualified"]:
            continue
        names = {lang: clean_name(d[lang]) for lang in emoji.LANGUAGES if lang in d and lang != "en"}
        out.append({"char": ch, "name": clean_name(d["en"]), "aliases": [clean_name(a) for a in d.get("alias", [])],
                    "names": names})
    out.sort(key=lambda e: e["char"])
    return out


NO_SHAPING = ("Pillow here has no text shaping (libraqm, which needs FriBiDi), so emoji made of several code "
              "points (flags, skin tones, ZWJ sequences: about 60% of them) would be drawn as separate glyphs and "
              "dropped. Install FriBiDi (Debian/Ubuntu: apt install libfribidi0; Pillow's wheels bundle raqm and "
              "load it), or pass --basic-layout to keep only the single-code-point emoji")


def has_shaping() -> bool:
    from PIL import features
    return bool(features.check("raqm"))


class Renderer:
    def __init__(self, font: str | Path | None = None, size: int = 64, basic_layout: bool = False):
        from PIL import ImageFont
        self.font_path = find_font(str(font) if font else None)
        if not basic_layout and not has_shaping():
            raise EmojiError(NO_SHAPING)
        layout = ImageFont.Layout.BASIC if basic_layout else ImageFont.Layout.RAQM
        self.font = ImageFont.truetype(str(self.font_path), STRIKE, layout_engine=layout)
        self.size = size
        self._notdef = None

    def glyph(self, ch: str):
        """RGBA image of the emoji as the font draws it (None when nothing is drawn)."""
        from PIL import Image, ImageDraw
        im = Image.new("RGBA", (160 * max(1, len(ch)), 160), (0, 0, 0, 0))
        ImageDraw.Draw(im).text((8, 8), ch, font=self.font, embedded_color=True)
        box = im.getbbox()
        return None if box is None else im.crop(box)

    def is_blank(self, glyph) -> bool:
        if glyph is None:
            return True
        a = np.asarray(glyph)[..., 3]
        if (a > 0).mean() < 0.02:
            return True
        if self._notdef is None:
            g = self.glyph("\U000e0fff")  # an unassigned code point: the font's missing-glyph box
            self._notdef = None if g is None else np.asarray(g).tobytes()
        if self._notdef is not None and np.asarray(glyph).tobytes() == self._notdef:
            return True
        return glyph.width > 140  # one glyph is at most 136 px wide: wider is a sequence the font lacks, drawn as
        # several glyphs side by side

    def render(self, ch: str):
        """uint8 RGB [size, size, 3] on white, the glyph centred with a 6% margin; None when blank."""
        from PIL import Image
        g = self.glyph(ch)
        if self.is_blank(g):
            return None
        side = int(max(g.width, g.height) * 1.06)
        canvas = Image.new("RGBA", (side, side), (255, 255, 255, 255))
        canvas.alpha_composite(g, ((side - g.width) // 2, (side - g.height) // 2))
        return np.asarray(canvas.convert("RGB").resize((self.size, self.size), Image.LANCZOS))


def heldout(name: str, fraction: float = 0.05, seed: int = 0) -> bool:
    h = int(hashlib.sha256(f"{seed}:{name}".encode()).hexdigest()[:8], 16)
    return h / 0xFFFFFFFF < fraction


def build_emoji_dataset(out_dir: str | Path, size: int = 64, font: str | None = None, per_shard: int = 1000,
                        languages: bool = True, heldout_fraction: float = 0.05, seed: int = 0,
                        limit: int | None = None, progress: bool = True, basic_layout: bool = False) -> dict:
    """Render every emoji -> webdataset shards + manifest.parquet. Returns counts.

    ``basic_layout``: draw without text shaping (for a Pillow without libraqm); sequences are then dropped as
    blank, and the report says so. Without it, a Pillow that cannot shape is refused with the fix."""
    from PIL import Image
    r = Renderer(font, size, basic_layout=basic_layout)
    entries = emoji_entries(languages)
    if limit:
        entries = entries[:limit]
    it = entries
    if progress:
        from tqdm import tqdm
        it = tqdm(entries, desc="render emoji", unit="emoji")
    blank, kept, held = [], 0, 0
    with ShardWriter(out_dir, per_shard) as w:
        for i, e in enumerate(it):
            img = r.render(e["char"])
            if img is None:
                blank.append(e["name"])
                continue
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, format="PNG", optimize=False)
            split = "heldout" if heldout(e["name"], heldout_fraction, seed) else "train"
            held += split == "heldout"
            meta = {"name": e["name"], "char": e["char"], "codepoints": " ".join(f"U+{ord(c):04X}" for c in e["char"]),
                    "aliases": "|".join(e["aliases"]), "split": split,
                    **{f"name_{lang}": n for lang, n in e["names"].items()}}
            w.write(Record(f"emoji{i:05d}", buf.getvalue(), e["name"], meta))
            kept += 1
    return {"emoji": len(entries), "rendered": kept, "blank_dropped": len(blank), "blank_examples": blank[:10],
            "heldout": held, "size": size, "font": str(r.font_path), "layout": "basic" if basic_layout else "raqm"}


def training_captions(meta: dict, rng: np.random.Generator) -> str:
    """One caption for a training step: the English name (60%), an alias, or a name in another language."""
    options = [meta["name"]] * 3 + [a for a in str(meta.get("aliases") or "").split("|") if a]
    options += [v for k, v in meta.items() if k.startswith("name_") and v]
    return options[int(rng.integers(len(options)))]
