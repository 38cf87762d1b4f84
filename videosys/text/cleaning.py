"""Caption cleaning before T5 tokenisation, with the standard library only.

Open-Sora runs every prompt through the caption cleaner of PixArt / DeepFloyd-IF (which needs ``bs4`` and
``ftfy``) before tokenising. This module does the same job with ``re``, ``html`` and ``unicodedata``: the
text the model sees is lower-case, free of markup, links, handles, file names and ids, with quotes and
dashes normalised and whitespace collapsed. It is written for prompts, not for scraped alt-texts, so it
drops the reference's long list of stock-photo phrases. Applied twice, it changes nothing more.
"""

from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse

_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_BARE_DOMAIN = re.compile(r"\b[\w-]+(?:\.[\w-]+)*\.(?:com|net|org|io|co|ru|de|uk|info|html?)(?:/\S*)?\b")
_TAG = re.compile(r"<[^>]{0,200}>")
_HANDLE = re.compile(r"@[\w.]+")
_IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")
_HASH_ID = re.compile(r"#\d{1,}\b")
_LONG_NUMBER = re.compile(r"\b\d{6,}\b")
_FILE_NAME = re.compile(r"\b[\w-]+\.(?:jpe?g|png|gif|webp|bmp|tiff?|mp4|mov|avi|mkv|pdf|txt)\b", re.IGNORECASE)
_DIMENSIONS = re.compile(r"\b\d+(?:\.\d+)?\s?[x×]\s?\d+(?:\.\d+)?\b")
# CJK strokes, radicals, kana, Hangul compatibility, enclosed letters and ideographs (T5's vocabulary has none)
_CJK = re.compile(
    "[\u2e80-\u2fdf\u3000-\u303f\u3040-\u30ff\u3100-\u312f\u3130-\u318f\u31c0-\u31ef\u31f0-\u31ff"
    "\u3200-\u32ff\u3300-\u33ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uff0f]+"
)
_DASHES = re.compile("[\u2010-\u2015\u2212\u2e3a\u2e3b\ufe58\ufe63\uff0d]")
_DOUBLE_QUOTES = re.compile("[\u201c\u201d\u201e\u201f\u00ab\u00bb\u2033\u301d\u301e]")
_SINGLE_QUOTES = re.compile("[\u2018\u2019\u201a\u201b\u2032`\u00b4]")
_REPEATED_QUOTES = re.compile(r"[\"']{2,}")
_ELLIPSIS = re.compile(r"\.{2,}|\u2026")
_REPEATED_PUNCT = re.compile(r"([!?,;:\-*_~=+])\1+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.;:!?])")
_WHITESPACE = re.compile(r"\s+")
_LEADING_JUNK = re.compile(r"^[\s_,\-:;.]+")
_TRAILING_JUNK = re.compile(r"[\s_,\-:;+]+$")


def clean_caption(text: str) -> str:
    """A prompt as Open-Sora's text encoder should see it (see the module docstring for the rules)."""
    if not isinstance(text, str):
        raise TypeError(f"caption must be a string, got {type(text).__name__}")
    caption = urllib.parse.unquote_plus(text) if "%" in text else text
    caption = html.unescape(caption)
    caption = unicodedata.normalize("NFKC", caption)
    caption = caption.replace("\\n", " ").replace("<person>", "person")
    caption = _TAG.sub(" ", caption)
    caption = _URL.sub(" ", caption)
    caption = _BARE_DOMAIN.sub(" ", caption)
    caption = caption.lower()
    caption = _HANDLE.sub(" ", caption)
    caption = _CJK.sub(" ", caption)
    caption = _DASHES.sub("-", caption)
    caption = _DOUBLE_QUOTES.sub('"', caption)
    caption = _SINGLE_QUOTES.sub("'", caption)
    caption = _IP.sub(" ", caption)
    caption = _FILE_NAME.sub(" ", caption)
    caption = _DIMENSIONS.sub(" ", caption)
    caption = _HASH_ID.sub(" ", caption)
    caption = _LONG_NUMBER.sub(" ", caption)
    caption = _REPEATED_QUOTES.sub('"', caption)
    caption = _ELLIPSIS.sub(" ", caption)
    caption = _REPEATED_PUNCT.sub(r"\1", caption)
    caption = _WHITESPACE.sub(" ", caption)
    caption = _SPACE_BEFORE_PUNCT.sub(r"\1", caption)
    caption = _LEADING_JUNK.sub("", caption)
    caption = _TRAILING_JUNK.sub("", caption)
    return caption.strip()


def with_aesthetic_score(prompt: str, score: float | None) -> str:
    """``prompt`` + ``" aesthetic score: 6.5."`` (Open-Sora 1.2 was trained with the score in the caption)."""
    if score is None:
        return prompt
    return f"{prompt.rstrip()} aesthetic score: {score:.1f}."
