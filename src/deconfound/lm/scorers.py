"""Toxicity scorers for prompts and continuations.

Every scorer has a ``name``, a list of ``columns`` and a ``score(texts)`` method that returns an
``(n, k)`` float array in that column order. ``primary`` names the column used as the single toxicity
number (e.g. the outcome of an extraction).

These are small offline models from 2018-era data. Their scores are **not Perspective API scores** and
must be labelled with the scorer's name (``score_frame`` does this). They catch insults, profanity and
slurs but miss implicit hate and many threats; see docs/scorers_topics_corpora.md.
"""
from __future__ import annotations

import pickle
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import pandas as pd

from ..errors import DataError
from ._packages import import_optional, package_file

__all__ = [
    "Scorer",
    "JigsawBiLSTM",
    "LexicalProfanity",
    "SCORERS",
    "DEFAULT_SCORER",
    "get_scorer",
    "register_scorer",
    "check_texts",
]


@runtime_checkable
class Scorer(Protocol):
    """What every scorer offers.

    Attributes
    ----------
    name : str
        Identifies the model; score columns are labelled with it.
    columns : list of str
        Names of the ``k`` score columns, in the order ``score`` returns them.
    primary : str
        The column used when a single toxicity number is needed.
    """

    name: str
    columns: list[str]
    primary: str

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Scores as an ``(n, k)`` float64 array in ``columns`` order."""
        ...

    def score_frame(self, texts: Sequence[str], *, prefix: bool = True) -> pd.DataFrame:
        """Scores as a DataFrame; columns are ``<name>_<column>`` unless ``prefix=False``."""
        ...


def check_texts(texts, name: str = "texts") -> list[str]:
    """Return ``texts`` as a list of str; raise TypeError for a bare string or a non-string entry."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{name}: expected a sequence of strings, got a single {type(texts).__name__}")
    try:
        out = list(texts)
    except TypeError:
        raise TypeError(f"{name}: expected a sequence of strings, got {type(texts).__name__}") from None
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{name}[{i}]: expected str, got {type(t).__name__}")
    return out


class _ScorerBase:
    name: str = ""
    columns: list[str] = []
    primary: str = ""

    def score(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def score_frame(self, texts: Sequence[str], *, prefix: bool = True) -> pd.DataFrame:
        """Scores as a DataFrame.

        Parameters
        ----------
        texts : sequence of str
        prefix : bool, default True
            Name the columns ``<scorer name>_<column>`` (e.g. ``jigsaw_bilstm_toxic``) so they are never
            mistaken for Perspective scores.
        """
        values = self.score(texts)
        cols = [f"{self.name}_{c}" if prefix else c for c in self.columns]
        return pd.DataFrame(values, columns=cols)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# --------------------------------------------------------------------------------------- Jigsaw BiLSTM

_JIGSAW_COLUMNS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]
_MAXLEN = 100
_WHAT = "JigsawBiLSTM scorer"


class _KerasTokenizerStandIn:
    """Receives the state of the pickled Keras ``Tokenizer``; holds data only."""


class _TokenizerUnpickler(pickle.Unpickler):
    """Unpickle the Keras Tokenizer without Keras: only its class is replaced, nothing else is allowed."""

    _allowed = {("collections", "OrderedDict"), ("collections", "defaultdict"), ("builtins", "int")}

    def find_class(self, module, name):
        if name == "Tokenizer" and module.startswith("keras"):
            return _KerasTokenizerStandIn
        if (module, name) in self._allowed:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"tokenizer.pickle: expected only the Keras Tokenizer and plain containers, got {module}.{name}"
        )


class _JigsawTokenizer:
    """The Keras legacy ``Tokenizer.texts_to_sequences`` plus ``pad_sequences`` (pre-padding, pre-truncation)."""

    def __init__(self, state: dict):
        if state.get("char_level") or state.get("analyzer") is not None or state.get("oov_token") is not None:
            raise DataError(
                "tokenizer.pickle: expected a word-level Keras Tokenizer without analyzer or OOV token, got "
                f"char_level={state.get('char_level')}, analyzer={state.get('analyzer')}, "
                f"oov_token={state.get('oov_token')}"
            )
        self.lower = bool(state["lower"])
        self.split = state["split"]
        self.num_words = state["num_words"]
        self.table = str.maketrans({c: self.split for c in state["filters"]})
        limit = self.num_words or float("inf")
        self.word_index = {w: i for w, i in state["word_index"].items() if i < limit}

    def words(self, text: str) -> list[str]:
        if self.lower:
            text = text.lower()
        return [w for w in text.translate(self.table).split(self.split) if w]

    def encode(self, texts: list[str], maxlen: int = _MAXLEN) -> np.ndarray:
        out = np.zeros((len(texts), maxlen), dtype=np.int64)
        get = self.word_index.get
        for r, text in enumerate(texts):
            ids = [i for i in map(get, self.words(text)) if i is not None][-maxlen:]
            if ids:
                out[r, maxlen - len(ids):] = ids
        return out


_JIGSAW_CACHE: dict[str, tuple] = {}


def _load_jigsaw():
    """Read the package's tokenizer and h5 weights once per process; returns (tokenizer, weights dict)."""
    weights_path = package_file("toxic_classifier", "model/model.weights.h5", _WHAT)
    tok_path = package_file("toxic_classifier", "model/tokenizer.pickle", _WHAT)
    key = str(weights_path)
    if key not in _JIGSAW_CACHE:
        h5py = import_optional("h5py", _WHAT)
        with open(tok_path, "rb") as fh:
            state = _TokenizerUnpickler(fh).load().__dict__
        tokenizer = _JigsawTokenizer(state)
        w = {}
        with h5py.File(weights_path, "r") as f:
            layers = f["layers"]
            w["embedding"] = layers["embedding/vars/0"][()]
            for side in ("forward", "backward"):
                cell = layers[f"bidirectional/{side}_layer/cell/vars"]
                w[side] = tuple(cell[k][()] for k in ("0", "1", "2"))
            w["dense"] = (layers["dense/vars/0"][()], layers["dense/vars/1"][()])
            w["dense_1"] = (layers["dense_1/vars/0"][()], layers["dense_1/vars/1"][()])
        _JIGSAW_CACHE[key] = (tokenizer, w)
    return _JIGSAW_CACHE[key]


def _build_jigsaw_net(w: dict):
    """The Keras network as torch modules: Embedding -> BiLSTM(50) -> max over time -> Dense(50, relu) -> Dense(6)."""
    torch = import_optional("torch", _WHAT)
    nn = torch.nn
    vocab, dim = w["embedding"].shape
    hidden = w["forward"][1].shape[0]
    emb = nn.Embedding(vocab, dim)
    lstm = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
    dense = nn.Linear(2 * hidden, w["dense"][0].shape[1])
    out = nn.Linear(w["dense_1"][0].shape[0], w["dense_1"][0].shape[1])

    def t(a):
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    with torch.no_grad():
        emb.weight.copy_(t(w["embedding"]))
        # Keras and torch both order the LSTM gates i, f, c(g), o; Keras kernels are (in, 4h), torch wants (4h, in).
        # Keras has one bias per gate: it goes into bias_ih and bias_hh is zero.
        for side, suffix in (("forward", ""), ("backward", "_reverse")):
            kernel, recurrent, bias = w[side]
            getattr(lstm, f"weight_ih_l0{suffix}").copy_(t(kernel.T))
            getattr(lstm, f"weight_hh_l0{suffix}").copy_(t(recurrent.T))
            getattr(lstm, f"bias_ih_l0{suffix}").copy_(t(bias))
            getattr(lstm, f"bias_hh_l0{suffix}").zero_()
        dense.weight.copy_(t(w["dense"][0].T))
        dense.bias.copy_(t(w["dense"][1]))
        out.weight.copy_(t(w["dense_1"][0].T))
        out.bias.copy_(t(w["dense_1"][1]))
    modules = nn.ModuleList([emb, lstm, dense, out]).eval()

    def forward(ids):
        seq, _ = lstm(emb(ids))  # (B, T, 2h): forward then backward, time-aligned like Keras' concat
        pooled = seq.max(dim=1).values  # GlobalMaxPooling1D
        return torch.sigmoid(out(torch.relu(dense(pooled))))  # dropout is off at inference

    return modules, forward


class JigsawBiLSTM(_ScorerBase):
    """The Jigsaw-trained BiLSTM of ``toxic-comment-classifier==0.3.0``, run in torch (no TensorFlow).

    Reads the package's own files: ``model/model.weights.h5`` (Keras 3 weights, via h5py) and
    ``model/tokenizer.pickle`` (a Keras Tokenizer, unpickled into a plain stand-in). Texts are lower-cased,
    punctuation becomes spaces, words outside the top 20,000 are dropped, and sequences are padded and
    truncated to 100 tokens at the front, exactly as the package's ``classify`` does. The port matches the
    package's TensorFlow path to 1e-5 (tests/reference/jigsaw_reference_scores.json).

    The six columns are the Jigsaw 2018 labels. They are **not Perspective API scores**: a small 2018-era
    model that misses implicit hate and most threats.

    Parameters
    ----------
    batch_size : int, default 512
        Texts per forward pass.
    threads : int, default 1
        torch intra-op threads while scoring (restored afterwards).

    Examples
    --------
    >>> s = JigsawBiLSTM()                                   # doctest: +SKIP
    >>> s.score_frame(["have a nice day"]).columns[0]        # doctest: +SKIP
    'jigsaw_bilstm_toxic'
    """

    name = "jigsaw_bilstm"
    columns = list(_JIGSAW_COLUMNS)
    primary = "toxic"

    def __init__(self, batch_size: int = 512, threads: int = 1):
        self.batch_size = batch_size
        self.threads = threads
        self._net = None

    def _ensure(self):
        if self._net is None:
            if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
                raise ValueError(f"batch_size: expected a positive int, got {self.batch_size!r}")
            if not isinstance(self.threads, (int, np.integer)) or self.threads < 1:
                raise ValueError(f"threads: expected a positive int, got {self.threads!r}")
            tokenizer, weights = _load_jigsaw()
            self._tokenizer = tokenizer
            self._net = _build_jigsaw_net(weights)
        return self._net

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids ``(n, 100)`` as the Keras pipeline builds them (0 = padding, at the front)."""
        self._ensure()
        return self._tokenizer.encode(check_texts(texts))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Six probabilities per text, ``(n, 6)`` float64 in ``columns`` order."""
        texts = check_texts(texts)
        _, forward = self._ensure()
        torch = import_optional("torch", _WHAT)
        ids = self._tokenizer.encode(texts)
        out = np.empty((len(texts), len(self.columns)), dtype=np.float64)
        old = torch.get_num_threads()
        torch.set_num_threads(int(self.threads))
        try:
            with torch.inference_mode():
                for start in range(0, len(texts), self.batch_size):
                    chunk = torch.from_numpy(ids[start:start + self.batch_size])
                    out[start:start + len(chunk)] = forward(chunk).numpy()
        finally:
            torch.set_num_threads(old)
        return out


# --------------------------------------------------------------------------------------- lexical


class LexicalProfanity(_ScorerBase):
    """The ``alt-profanity-check`` score: a calibrated linear SVM on TF-IDF words (one column, ``profanity``).

    A lexical score: it reacts to swear words and slurs, not to meaning. Not a Perspective score.
    """

    name = "alt_profanity"
    columns = ["profanity"]
    primary = "profanity"

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Probability of profanity per text, ``(n, 1)`` float64."""
        texts = check_texts(texts)
        if not texts:
            return np.empty((0, 1))
        mod = import_optional("profanity_check", "LexicalProfanity scorer")
        return np.asarray(mod.predict_prob(texts), dtype=np.float64).reshape(-1, 1)


# --------------------------------------------------------------------------------------- registry

SCORERS: dict[str, type] = {
    JigsawBiLSTM.name: JigsawBiLSTM,
    LexicalProfanity.name: LexicalProfanity,
}
DEFAULT_SCORER = JigsawBiLSTM.name


def register_scorer(name: str, cls: type) -> None:
    """Add a scorer class to the registry under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")
    SCORERS[name] = cls


def get_scorer(name: str | Scorer = DEFAULT_SCORER, **kwargs) -> Scorer:
    """A scorer instance by registry name (``jigsaw_bilstm``, ``alt_profanity``); an instance passes through."""
    if not isinstance(name, str):
        if isinstance(name, Scorer):
            return name
        raise TypeError(f"scorer: expected a registry name or a Scorer, got {type(name).__name__}")
    if name not in SCORERS:
        raise ValueError(f"scorer: expected one of {sorted(SCORERS)}, got {name!r}")
    return SCORERS[name](**kwargs)
