"""Toxicity scorers: the torch port of the Jigsaw BiLSTM against the package's own TensorFlow output.

Oracle: tests/reference/jigsaw_reference_scores.json, written by tests/reference/make_jigsaw_reference.py
with toxic-comment-classifier==0.3.0 on TensorFlow 2.21.0 (see the JSON for the exact command).
"""
import importlib.util
import io
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("h5py")

from deconfound.errors import MissingDependencyError  # noqa: E402
from deconfound.lm import scorers  # noqa: E402
from deconfound.lm.scorers import JigsawBiLSTM, LexicalProfanity, Scorer, get_scorer  # noqa: E402

pytestmark = [pytest.mark.lm, pytest.mark.real]

REF = Path(__file__).resolve().parents[1] / "reference" / "jigsaw_reference_scores.json"
HAS_JIGSAW = importlib.util.find_spec("toxic_classifier") is not None
HAS_PROFANITY = importlib.util.find_spec("profanity_check") is not None
needs_jigsaw = pytest.mark.skipif(not HAS_JIGSAW, reason="toxic-comment-classifier not installed")


@pytest.fixture(scope="module")
def jigsaw():
    torch.set_num_threads(1)
    return JigsawBiLSTM()


@pytest.fixture(scope="module")
def reference():
    return json.loads(REF.read_text(encoding="utf-8"))


@needs_jigsaw
def test_port_matches_tensorflow_reference(jigsaw, reference):
    assert reference["origin"].startswith("tensorflow")
    assert reference["columns"] == jigsaw.columns
    assert len(reference["texts"]) >= 20
    got = jigsaw.score(reference["texts"])
    want = np.asarray(reference["scores"])
    assert got.shape == want.shape == (len(reference["texts"]), 6)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # The references span benign to toxic, so the check is not trivially passed by constant output.
    assert want[:, 0].min() < 0.05 and want[:, 0].max() > 0.95


@needs_jigsaw
def test_front_truncation_and_padding(jigsaw):
    ids = jigsaw.encode(["the " * 150, "you idiot", ""])
    assert ids.shape == (3, 100)
    assert (ids[0] == 1).all()  # "the" is word 1; 150 words truncated to 100
    idiot = jigsaw._tokenizer.word_index["idiot"]
    np.testing.assert_array_equal(ids[1, -2:], [jigsaw._tokenizer.word_index["you"], idiot])
    assert (ids[1, :-2] == 0).all()  # padded at the front
    assert (ids[2] == 0).all()
    assert max(jigsaw._tokenizer.word_index.values()) < 20000  # words past the top 20,000 are dropped
    # Keras filters: punctuation and case do not change the ids.
    np.testing.assert_array_equal(jigsaw.encode(["YOU, idiot!!!"]), ids[1:2])


@needs_jigsaw
def test_batching_does_not_change_scores(jigsaw, reference):
    texts = reference["texts"]
    one = JigsawBiLSTM(batch_size=1).score(texts)
    np.testing.assert_allclose(one, jigsaw.score(texts), atol=1e-6, rtol=0)
    np.testing.assert_array_equal(JigsawBiLSTM(batch_size=7).score(texts), JigsawBiLSTM(batch_size=7).score(texts))


@needs_jigsaw
def test_frame_names_columns_by_scorer(jigsaw):
    frame = jigsaw.score_frame(["have a nice day", "you stupid idiot"])
    assert list(frame.columns) == [f"jigsaw_bilstm_{c}" for c in scorers._JIGSAW_COLUMNS]
    assert frame.shape == (2, 6)
    assert list(jigsaw.score_frame(["x"], prefix=False).columns) == jigsaw.columns
    assert jigsaw.score([]).shape == (0, 6)
    assert isinstance(jigsaw, Scorer)


@needs_jigsaw
def test_scoring_restores_thread_count(jigsaw):
    before = torch.get_num_threads()
    JigsawBiLSTM(threads=1).score(["hello"])
    assert torch.get_num_threads() == before


@needs_jigsaw
def test_no_tensorflow_needed(jigsaw):
    jigsaw.score(["hello there"])
    assert "tensorflow" not in sys.modules and "keras" not in sys.modules


def test_tokenizer_unpickler_refuses_other_classes():
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    data = pickle.dumps(Evil())
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        scorers._TokenizerUnpickler(io.BytesIO(data)).load()


def test_text_checks():
    s = JigsawBiLSTM()
    with pytest.raises(TypeError, match="single str"):
        s.score("one text")
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str, got NoneType"):
        s.score(["a", None])
    with pytest.raises(ValueError, match="batch_size"):
        JigsawBiLSTM(batch_size=0).score(["a"])


@pytest.mark.skipif(not HAS_PROFANITY, reason="alt-profanity-check not installed")
def test_lexical_profanity_wraps_package():
    import profanity_check

    texts = ["have a lovely afternoon", "shut up you stupid ass", "what the hell"]
    s = get_scorer("alt_profanity")
    assert isinstance(s, LexicalProfanity) and s.columns == ["profanity"]
    got = s.score(texts)
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got[:, 0], profanity_check.predict_prob(texts), rtol=0, atol=0)
    assert got[1, 0] > 0.9 > 0.5 > got[0, 0]
    assert list(s.score_frame(texts).columns) == ["alt_profanity_profanity"]
    assert s.score([]).shape == (0, 1)


def test_registry():
    assert isinstance(get_scorer(), JigsawBiLSTM)
    assert get_scorer("jigsaw_bilstm", batch_size=3).batch_size == 3
    inst = LexicalProfanity()
    assert get_scorer(inst) is inst
    with pytest.raises(ValueError, match=r"expected one of \['alt_profanity', 'jigsaw_bilstm'\], got 'perspective'"):
        get_scorer("perspective")
    with pytest.raises(TypeError):
        get_scorer(3)


def test_missing_package_gives_install_command(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *args, **kwargs):
        return None if name in ("toxic_classifier", "profanity_check") else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps toxic-comment-classifier==0\.3\.0"):
        JigsawBiLSTM().score(["hello"])
    monkeypatch.setitem(sys.modules, "profanity_check", None)  # makes the import fail
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps alt-profanity-check"):
        LexicalProfanity().score(["hello"])
