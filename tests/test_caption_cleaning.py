"""Caption cleaning (standard library only) and the aesthetic-score suffix."""

from __future__ import annotations

import pytest

from videosys.text import clean_caption, with_aesthetic_score


@pytest.mark.parametrize(
    "raw, cleaned",
    [
        ("A cat playing in the snow.", "a cat playing in the snow."),
        ("Visit https://example.com/a?b=1 or www.site.org now", "visit or now"),
        ("<b>Bold</b> &amp; more", "bold & more"),
        ("\u201cquoted\u201d \u2014 dash", '"quoted" - dash'),
        ("by @someone, IMG_1234.jpg at 1920x1080", "by, at"),
        ("wait... what!!!", "wait what!"),
        ("cat 日本の猫 dog", "cat dog"),
        ("ip 192.168.0.1 id #12345 and 1234567", "ip id and"),
        ("  -- leading junk", "leading junk"),
        ("a%20b", "a b"),
        ("line\\nbreak", "line break"),
    ],
)
def test_clean_caption(raw, cleaned):
    assert clean_caption(raw) == cleaned


@pytest.mark.parametrize("raw", ["A cat.", "Visit https://x.io <i>now</i>!!", "  \u201cHi\u201d... @me  "])
def test_cleaning_is_idempotent(raw):
    once = clean_caption(raw)
    assert clean_caption(once) == once


def test_aesthetic_suffix_then_cleaning_as_the_reference():
    text = with_aesthetic_score("A Red Car.", 6.5)
    assert text == "A Red Car. aesthetic score: 6.5."
    assert clean_caption(text) == "a red car. aesthetic score: 6.5."
    assert with_aesthetic_score("x", None) == "x"


def test_non_string_rejected():
    with pytest.raises(TypeError, match="caption must be a string"):
        clean_caption(3)  # type: ignore[arg-type]
