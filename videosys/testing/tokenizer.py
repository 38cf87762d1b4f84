"""Build a small T5-style SentencePiece tokenizer completely offline.

Latte-1 encodes prompts with the T5 v1.1 tokenizer (a SentencePiece unigram
model with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and no BOS token).  The
smoke-test checkpoints written by :mod:`videosys.testing.tiny_latte` need a
tokenizer with the same conventions, but nothing may be downloaded, so this
module trains a tiny unigram model on a synthetic English corpus built from
word lists and saves it in the folder layout that ``transformers`` uses for T5
(``spiece.model``, ``tokenizer.json``, ``tokenizer_config.json`` and
``special_tokens_map.json``).

The fast ``tokenizer.json`` is always written: with transformers 5 a folder
that only holds ``spiece.model`` can only be converted when ``protobuf`` is
installed, while ``tokenizer.json`` loads with the ``tokenizers`` library alone.
"""

from __future__ import annotations

import io
import json
import logging
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "PAD_TOKEN",
    "EOS_TOKEN",
    "UNK_TOKEN",
    "build_corpus",
    "train_sentencepiece_model",
    "build_t5_tokenizer",
    "save_t5_tokenizer",
]

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 1000
"""Requested size of the SentencePiece vocabulary (a soft limit, see below)."""

PAD_TOKEN = "<pad>"
EOS_TOKEN = "</s>"
UNK_TOKEN = "<unk>"

# --------------------------------------------------------------------------
# Synthetic English corpus
# --------------------------------------------------------------------------

_COLOURS = (
    "red orange yellow green blue purple pink brown black white grey gray golden silver "
    "violet turquoise crimson teal beige navy colorful colourful dark bright pale"
).split()

_ANIMALS = (
    "cat cats kitten dog dogs puppy horse horses bird birds fish cow sheep goat pig rabbit fox "
    "wolf bear panda tiger lion elephant giraffe zebra monkey deer squirrel mouse owl eagle "
    "duck swan penguin dolphin whale shark turtle frog butterfly bee spider snake camel koala"
).split()

_PEOPLE = (
    "man woman boy girl child children person people astronaut dancer chef farmer musician "
    "robot knight pilot surfer skier runner couple family crowd teacher student"
).split()

_OBJECTS = (
    "car train boat ship plane bicycle bike ball kite balloon umbrella guitar piano book cup "
    "candle lamp flower flowers tree trees leaf leaves rock house castle bridge tower clock "
    "hat chair table window door road fire smoke wave waves cloud clouds rain star stars moon "
    "sun rocket lantern flag toy camera phone computer"
).split()

_MOTIONS = (
    "playing running walking jumping flying swimming dancing sitting sleeping eating drinking "
    "reading singing riding driving floating falling spinning rolling climbing surfing skating "
    "smiling looking waving moving standing chasing exploring crossing drifting glowing "
    "burning melting blooming shining"
).split()

_SCENES = (
    "snow beach forest city street park garden field meadow desert mountain mountains river "
    "lake ocean sea sky space kitchen room house village road bridge jungle island valley "
    "waterfall night morning sunset sunrise storm fog rain winter summer autumn spring "
    "underwater countryside"
).split()

_ADJECTIVES = (
    "small big large tiny huge little old young happy sad cute fluffy beautiful calm quiet "
    "busy wild fast slow slowly quickly gentle soft shiny misty snowy sunny rainy cloudy "
    "ancient modern futuristic magical realistic cinematic detailed peaceful lonely"
).split()

_STYLES = (
    "in the style of a painting", "high quality", "4k", "8k", "cinematic lighting",
    "close up", "wide shot", "slow motion", "time lapse", "aerial view", "oil painting",
    "watercolor", "anime style", "photorealistic", "studio lighting", "at golden hour",
)

_COMMON = (
    "the of and to in is it you that he was for on are as with his they at be this have from "
    "or one had by word but not what all were we when your can said there use an each which "
    "she do how their if will up other about out many then them these so some her would make "
    "like him into time has look two more write go see number no way could than first water "
    "been call who oil its now find long down day did get come made may part over new after "
    "thing our just name good very through back much before also around another came three "
    "show every near both between own under while along might next together"
).split()

_VERBS = (
    "play run walk jump fly swim dance sit sleep eat drink read sing ride drive float fall "
    "spin roll climb surf skate smile look wave move stand chase explore cross drift glow "
    "burn melt bloom shine plays runs walks flies swims dances rides moves looks"
).split()

_PREPOSITIONS = "in on under over near through across along above behind beside into around".split()
_ARTICLES = ("a", "an", "the", "two", "three", "some", "many")

_CAPITAL_NAMES = (
    "Paris London Tokyo New York Rome Venice Zurich Quebec Oslo Kyoto Jupiter Mars "
    "Earth Van Gogh Iceland Sahara Alps Amazon Xmas Yosemite"
).split()

_ALPHABET_LINES = (
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
    "0 1 2 3 4 5 6 7 8 9 10 16 24 100 1000",
    ". , ! ? ; : ' \" - ( ) & / %",
)


def _noun_phrase(rng: random.Random) -> str:
    """Return a short noun phrase such as ``"a fluffy white cat"``."""
    noun = rng.choice(_ANIMALS + _PEOPLE + _OBJECTS)
    words = [rng.choice(_ARTICLES)]
    if rng.random() < 0.6:
        words.append(rng.choice(_ADJECTIVES))
    if rng.random() < 0.5:
        words.append(rng.choice(_COLOURS))
    words.append(noun)
    return " ".join(words)


def _sentence(rng: random.Random) -> str:
    """Return one synthetic video-prompt-like sentence."""
    kind = rng.randrange(8)
    subject = _noun_phrase(rng)
    scene = f"{rng.choice(_PREPOSITIONS)} the {rng.choice(_ADJECTIVES + _COLOURS)} {rng.choice(_SCENES)}"
    if kind == 0:
        text = f"{subject} {rng.choice(_MOTIONS)} {scene}"
    elif kind == 1:
        text = f"{subject} is {rng.choice(_MOTIONS)} {scene}, {rng.choice(_STYLES)}"
    elif kind == 2:
        text = f"{subject} and {_noun_phrase(rng)} {rng.choice(_MOTIONS)} {scene}"
    elif kind == 3:
        text = f"{rng.choice(_SCENES)} {scene} with {_noun_phrase(rng)}, {rng.choice(_STYLES)}"
    elif kind == 4:
        text = f"{subject} {rng.choice(_MOTIONS)} in {rng.choice(_CAPITAL_NAMES)} at {rng.choice(_SCENES)}"
    elif kind == 5:
        text = f"there is {subject} that can {rng.choice(_VERBS)} {scene}"
    elif kind == 6:
        text = f"this is a video of {subject} who likes to {rng.choice(_VERBS)} {scene}"
    else:
        text = " ".join(rng.choice(_COMMON) for _ in range(rng.randint(4, 10)))
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.4:
        text += rng.choice((".", "!", "."))
    return text


def build_corpus(num_sentences: int = 4000, seed: int = 0) -> list[str]:
    """Generate a deterministic English corpus of short video-prompt sentences.

    Args:
        num_sentences: Number of random sentences (the plain word lists and a few
            alphabet/digit lines are always added on top, so every listed word
            and every ASCII letter and digit occurs in the corpus).
        seed: Seed of the :class:`random.Random` generator that picks the words.

    Returns:
        The corpus as a list of lines.
    """
    rng = random.Random(seed)
    lines: list[str] = []
    for word_list in (_COLOURS, _ANIMALS, _PEOPLE, _OBJECTS, _MOTIONS, _SCENES, _ADJECTIVES,
                      _PREPOSITIONS, _ARTICLES, _CAPITAL_NAMES, _COMMON, _VERBS):
        lines.append(" ".join(word_list))
    lines.extend(_STYLES)
    lines.extend(_ALPHABET_LINES * 3)
    lines.extend(_sentence(rng) for _ in range(num_sentences))
    return lines


# --------------------------------------------------------------------------
# SentencePiece training
# --------------------------------------------------------------------------


def train_sentencepiece_model(
    sentences: list[str],
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = 0,
) -> bytes:
    """Train a T5-style SentencePiece unigram model and return its serialized proto.

    The trainer runs single-threaded on the sentences in the given order
    (no input shuffling, no sampling), so identical inputs give a byte-identical
    model.  ``vocab_size`` is a soft limit: if the corpus cannot support that
    many pieces the trainer stops with fewer.

    Args:
        sentences: Training text, one sentence per entry.
        vocab_size: Requested number of pieces, special tokens included.
        seed: Seed handed to SentencePiece's global random generator.

    Returns:
        The serialized ``ModelProto`` (the content of a ``spiece.model`` file).
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buffer,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="nmt_nfkc",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece=PAD_TOKEN,
        eos_piece=EOS_TOKEN,
        unk_piece=UNK_TOKEN,
        num_threads=1,
        shuffle_input_sentence=False,
        input_sentence_size=0,
        minloglevel=2,
    )
    return buffer.getvalue()


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """Decode a protobuf varint at ``pos``; return ``(value, next_pos)``."""
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _proto_fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield ``(field_number, wire_type, value)`` for each field of a protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield field, wire, value
        elif wire == 1:
            yield field, wire, data[pos:pos + 8]
            pos += 8
        elif wire == 2:
            length, pos = _read_varint(data, pos)
            yield field, wire, data[pos:pos + length]
            pos += length
        elif wire == 5:
            yield field, wire, data[pos:pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _precompiled_charsmap(model_proto: bytes) -> bytes | None:
    """Return the normalizer's precompiled charsmap of a SentencePiece model.

    ``ModelProto.normalizer_spec`` is field 3 and
    ``NormalizerSpec.precompiled_charsmap`` is its field 2; reading them by hand
    avoids a dependency on ``protobuf``.
    """
    for field, wire, value in _proto_fields(model_proto):
        if field == 3 and wire == 2:
            assert isinstance(value, bytes)
            for sub_field, sub_wire, sub_value in _proto_fields(value):
                if sub_field == 2 and sub_wire == 2:
                    assert isinstance(sub_value, bytes)
                    return sub_value or None
    return None


# --------------------------------------------------------------------------
# transformers T5 tokenizer folder
# --------------------------------------------------------------------------


def build_t5_tokenizer(
    out_dir: Path,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    seed: int = 0,
    *,
    model_max_length: int = 120,
    num_sentences: int = 4000,
) -> Path:
    """Train a small T5 tokenizer offline and save it as a transformers folder.

    The folder holds ``spiece.model`` (the SentencePiece model, as in the T5
    checkpoints on the hub), ``tokenizer.json`` (the fast tokenizer),
    ``tokenizer_config.json`` and ``special_tokens_map.json``; it loads with
    ``transformers.AutoTokenizer.from_pretrained(out_dir)`` as a
    ``T5Tokenizer``.  Ids follow T5: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2,
    no BOS, an EOS appended to every encoded text, and no ``<extra_id_*>``
    sentinels (``extra_ids=0``).

    Args:
        out_dir: Folder to write (created if missing; existing files of the same
            names are overwritten).
        vocab_size: Requested SentencePiece vocabulary size (soft limit).
        seed: Seed of the synthetic corpus and of the SentencePiece trainer.
        model_max_length: ``model_max_length`` stored in ``tokenizer_config.json``.
        num_sentences: Number of synthetic training sentences.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.
    """
    model_proto = train_sentencepiece_model(build_corpus(num_sentences, seed), vocab_size, seed)
    return save_t5_tokenizer(model_proto, out_dir, model_max_length=model_max_length)


def save_t5_tokenizer(model_proto: bytes, out_dir: str | Path, *, model_max_length: int,
                      check: Callable[[Any], None] | None = None) -> Path:
    """Save a SentencePiece model with T5's special ids as a transformers tokenizer folder (``spiece.model``,
    ``tokenizer.json``, configs, ``special_tokens_map.json``); ``check(tokenizer)`` may veto it first."""
    import sentencepiece as spm
    from transformers import T5Tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    processor = spm.SentencePieceProcessor(model_proto=model_proto)
    if (processor.pad_id(), processor.eos_id(), processor.unk_id(), processor.bos_id()) != (0, 1, 2, -1):
        raise RuntimeError("SentencePiece special ids do not follow the T5 convention")
    vocab = [(processor.id_to_piece(i), float(processor.get_score(i))) for i in range(processor.get_piece_size())]
    tokenizer = T5Tokenizer(vocab=vocab, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN, pad_token=PAD_TOKEN, extra_ids=0,
                            _spm_precompiled_charsmap=_precompiled_charsmap(model_proto),
                            model_max_length=model_max_length)
    if check is not None:
        check(tokenizer)
    tokenizer.save_pretrained(str(out_dir))
    (out_dir / "spiece.model").write_bytes(model_proto)
    special_tokens = {"eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN, "unk_token": UNK_TOKEN}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(special_tokens, indent=2) + "\n", encoding="utf-8")
    logger.info("wrote T5 tokenizer with %d pieces to %s", len(vocab), out_dir)
    return out_dir
