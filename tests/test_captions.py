"""IF's caption cleaning, on a table of cases."""

from __future__ import annotations

import pytest

from pixelcascade.text.captions import clean_caption

CASES = [
    ("A Photo of a CAT", "a photo of a cat"),
    ("a dog https://example.com/img.jpg running", "a dog running"),
    ("<b>bold</b> text", "bold text"),
    ("follow @someone for more", "follow for more"),
    ("a red apple \u2014 on a table", "a red apple - on a table"),
    ("\u201cquoted\u201d", "quoted"),
    ("image 1920x1080 wallpaper", "image wallpaper"),
    ("free shipping on red shoes", "on red shoes"),
    ("photo_of_a_big_red_dog", "photo of a big red dog"),
    ("cat #12345678 picture", "cat picture"),
    ("picture.png of a boat", "of a boat"),
    ("a   lot   of    spaces", "a lot of spaces"),
    ("  trailing dash -", "trailing dash"),
    ("a%20url%20encoded%20caption", "a url encoded caption"),
    ("\u732b a cat", "a cat"),
    ("page 3 of the book", "of the book"),
]


@pytest.mark.parametrize("raw,clean", CASES)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean


def test_idempotent_on_plain_prompts():
    for p in ["three red circles left of a blue square", "a green triangle"]:
        assert clean_caption(p) == p
