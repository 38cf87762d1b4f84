"""The demo model's T5 tokenizer, trained offline on the caption corpus plus generic English.

It follows the T5 conventions of :mod:`videosys.testing.tokenizer` (``<pad>`` = 0, ``</s>`` = 1,
``<unk>`` = 2, no BOS, EOS appended) and is saved in the same folder layout, but its SentencePiece model
also sees many demo captions, so that every caption word (colours, shapes, motions) is one piece of its
own instead of a few sub-word fragments shared with other words.
"""

from __future__ import annotations

import logging
from pathlib import Path

from videosys.demo.clips import caption_corpus, caption_vocabulary
from videosys.testing.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    UNK_TOKEN,
    build_corpus,
    save_t5_tokenizer,
)

__all__ = ["build_demo_tokenizer", "split_words"]

logger = logging.getLogger(__name__)


def build_demo_tokenizer(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 1000,
                         model_max_length: int = 120) -> Path:
    """Train and save the tokenizer folder (``spiece.model``, ``tokenizer.json``, configs) to ``out_dir``.

    The same ``seed`` gives byte-identical files.  Raises ``RuntimeError`` if a caption word does not
    come out as a single piece.
    """
    corpus = build_corpus(3000, seed) + caption_corpus(3000, seed)
    proto = _train(corpus, vocab_size, seed)

    def one_piece_per_word(tokenizer: object) -> None:
        split = split_words(tokenizer)
        if split:
            raise RuntimeError(f"caption words not encoded as single pieces: {split}")

    return save_t5_tokenizer(proto, out_dir, model_max_length=model_max_length, check=one_piece_per_word)


def _train(sentences: list[str], vocab_size: int, seed: int) -> bytes:
    """SentencePiece unigram training as :func:`videosys.testing.tokenizer.train_sentencepiece_model`
    (single-threaded, unshuffled: byte-identical for identical input), plus every caption word as a
    user-defined word-initial piece (``"▁red"``), so that it is always one token."""
    import io

    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buffer, model_type="unigram", vocab_size=vocab_size,
        hard_vocab_limit=False, character_coverage=1.0, normalization_rule_name="nmt_nfkc",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece=PAD_TOKEN, eos_piece=EOS_TOKEN, unk_piece=UNK_TOKEN,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0, minloglevel=2,
        user_defined_symbols=["▁" + word for word in caption_vocabulary()],
    )
    return buffer.getvalue()


def split_words(tokenizer: object) -> dict[str, list[str]]:
    """Caption words that ``tokenizer`` does not encode as exactly one known piece (word -> pieces)."""
    bad: dict[str, list[str]] = {}
    unk = getattr(tokenizer, "unk_token", UNK_TOKEN)
    for word in caption_vocabulary():
        pieces = tokenizer.tokenize(word)  # type: ignore[attr-defined]
        if len(pieces) != 1 or pieces[0] == unk:
            bad[word] = pieces
    return bad
