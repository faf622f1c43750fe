"""Your own prompts: a file or DataFrame of prompts -> an extraction, with the treatment's provenance recorded.

:func:`extract_prompts` reads a table with a text column and optional topic, treatment or score, id and group
columns, makes the treatment T by one of three instruments and runs :func:`deconfound.lm.extract.extract`:

``treatment_column``
    T is the column itself (0/1 or True/False).
``score_column`` with ``score_threshold`` or ``score_quantile``
    T = 1 when the score is at least the threshold (or the given quantile of the scores).
neither
    The prompts are scored by ``treatment_scorer`` (default: the outcome scorer), column ``score_name``, and T =
    1 when that score is at least ``score_threshold`` (default 0.5) or its ``score_quantile``.

``meta["treatment"]`` records the instrument, the column or scorer, and the threshold or quantile with the
threshold it gave. Gold topic labels enter as the one ``topic`` confounder column.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

READERS = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".jsonl": "jsonl", ".json": "json", ".txt": "txt"}


def read_prompts(source, *, text_column: str = "text") -> pd.DataFrame:
    """A DataFrame of prompts from a DataFrame or a file (csv, tsv, parquet, jsonl, json; txt: one per line).

    A ``.txt`` file gives one column named ``text_column``.
    """
    if isinstance(source, pd.DataFrame):
        return source.reset_index(drop=True)
    path = Path(source).expanduser()
    if not path.is_file():
        raise DataError(f"prompts: expected a file or a DataFrame, got {'a folder' if path.exists() else 'no file'} "
                        f"at {str(path)!r}")
    kind = READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"prompts file {path.name}: expected a suffix in {sorted(READERS)}, got {path.suffix!r}")
    if kind == "txt":
        lines = [ln.rstrip("\n") for ln in path.read_text(encoding="utf-8").splitlines()]
        return pd.DataFrame({text_column: [ln for ln in lines if ln.strip()]})
    if kind == "parquet":
        return pd.read_parquet(path)
    if kind in ("jsonl", "json"):
        return pd.read_json(path, lines=kind == "jsonl")
    return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", keep_default_na=True)


def _column(frame: pd.DataFrame, name: str, role: str) -> pd.Series:
    if name not in frame.columns:
        raise DataError(f"{role} column: expected one of {list(frame.columns)}, got {name!r}")
    col = frame[name]
    if isinstance(col, pd.DataFrame):
        raise DataError(f"{role} column {name!r}: expected one column of that name, got {col.shape[1]}")
    return col


def _scores(col: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise DataError(f"score column {name!r}: expected finite numbers, got {col.iloc[bad[0]]!r} in row "
                        f"{int(bad[0])} ({bad.size} rows)")
    return values


def _binary(col: pd.Series, name: str) -> np.ndarray:
    values = col.map(lambda v: {True: 1, False: 0}.get(v, v) if isinstance(v, (bool, np.bool_)) else v)
    num = pd.to_numeric(values, errors="coerce")
    bad = ~num.isin([0, 1])
    if bad.any():
        first = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError(f"treatment column {name!r}: expected 0/1 or True/False, got {col.iloc[first]!r} in row "
                        f"{first} ({int(bad.sum())} rows)")
    return num.to_numpy(dtype=float)


def _cut(scores: np.ndarray, threshold, quantile) -> tuple[float, dict]:
    if threshold is not None and quantile is not None:
        raise ValueError("treatment: expected score_threshold or score_quantile, got both")
    if quantile is not None:
        if not 0 < quantile < 1:
            raise ValueError(f"score_quantile: expected a number in (0, 1), got {quantile}")
        cut = float(np.quantile(scores, quantile))
        return cut, {"quantile": float(quantile), "threshold": cut,
                     "rule": f"score >= {cut:.6g} (its {quantile:g} quantile)"}
    cut = 0.5 if threshold is None else float(threshold)
    return cut, {"threshold": cut, "rule": f"score >= {cut:.6g}"}


def make_treatment(frame: pd.DataFrame, *, text_column: str, treatment_column=None, score_column=None,
                   score_threshold=None, score_quantile=None, scorer=None, score_name: str | None = None):
    """The :class:`~deconfound.lm.extract.Treatment` for :func:`extract_prompts`, with its provenance."""
    from .extract import Treatment

    if treatment_column is not None and (score_column is not None or score_threshold is not None
                                         or score_quantile is not None):
        raise ValueError("treatment: expected treatment_column alone, or score_column/score_threshold/"
                         "score_quantile, got both kinds")
    if treatment_column is not None:
        t = _binary(_column(frame, treatment_column, "treatment"), treatment_column)
        prov = {"instrument": "column", "column": treatment_column, "rule": f"T = column {treatment_column!r}"}
        return Treatment(scores=t, source=f"column:{treatment_column}", threshold=0.5, provenance=prov)
    if score_column is not None:
        scores = _scores(_column(frame, score_column, "score"), score_column)
        cut, prov = _cut(scores, score_threshold, score_quantile)
        prov = {"instrument": "score_column", "column": score_column, **prov,
                "rule": prov["rule"].replace("score", f"column {score_column!r}", 1)}
        return Treatment(scores=scores, source=f"column:{score_column}", threshold=cut, provenance=prov)
    from .scorers import get_scorer

    scorer = get_scorer() if scorer is None else get_scorer(scorer)
    name = score_name or getattr(scorer, "primary", None) or list(scorer.columns)[0]
    if name not in list(scorer.columns):
        raise DataError(f"score_name: expected one of {list(scorer.columns)} of scorer {scorer.name}, got {name!r}")
    texts = frame[text_column].astype(str).tolist()
    scores = np.asarray(scorer.score(texts), dtype=float)[:, list(scorer.columns).index(name)]
    cut, prov = _cut(scores, score_threshold, score_quantile)
    prov = {"instrument": "scorer", "scorer": scorer.name, "column": name, **prov,
            "rule": prov["rule"].replace("score", f"{scorer.name} {name!r} score of the prompt", 1)}
    return Treatment(scores=scores, source=f"scorer:{scorer.name}", threshold=cut, scorer=scorer, column=name,
                     provenance=prov)


def extract_prompts(model, prompts, *, out_dir, text_column: str = "text", topic_column: str | None = None,
                    id_column: str | None = None, treatment_column: str | None = None,
                    score_column: str | None = None, score_threshold: float | None = None,
                    score_quantile: float | None = None, treatment_scorer=None, score_name: str | None = None,
                    group_column: str | None = None, outcome=None, outcome_column: str | None = None,
                    topics="zero_shot", patch_outcome="next_token_mass", **options):
    """Extract a :class:`~deconfound.data.MediationData` from your own prompts.

    Parameters
    ----------
    model : LoadedModel or (model, tokenizer)
        E.g. ``load_model("path/to/hf-folder", dtype="bfloat16", device="cuda")``.
    prompts : DataFrame or path
        A table with one prompt per row (csv, tsv, parquet, jsonl, json, or txt with one prompt per line).
    out_dir : path
        Where the extraction goes (resumable; see :func:`deconfound.lm.extract.extract`).
    text_column : str
        The prompt texts.
    topic_column : str, optional
        Gold topic labels: they become the one confounder column ``topic``, as they are. Without it,
        ``topics`` labels the prompts.
    id_column : str, optional
        Prompt ids (unique); default ``p000000``, ... They key the random streams.
    treatment_column : str, optional
        T itself (0/1 or True/False).
    score_column : str, optional
        A numeric prompt score; T = 1 when it is >= ``score_threshold`` or its ``score_quantile``.
    score_threshold, score_quantile : float, optional
        The cut of ``score_column`` or of the scorer's score (at most one; default threshold 0.5).
    treatment_scorer : scorer or registry name, optional
        Scores the prompts when neither treatment_column nor score_column is given; default the outcome
        scorer.
    score_name : str, optional
        The column of ``treatment_scorer`` used (default its primary column).
    group_column : str, optional
        A grouping of the prompts (e.g. their source document): written to ``prompts.parquet`` as ``group``
        and recorded in the metadata, for cluster-aware analyses.
    outcome : scorer or registry name, optional
        Scores the continuations; default :func:`deconfound.lm.scorers.get_scorer` (the Jigsaw BiLSTM).
    outcome_column : str, optional
        Its column used as Y (default its primary column).
    topics : "zero_shot", a labeller or None
        Used only without ``topic_column``: ``"zero_shot"`` is
        :class:`deconfound.lm.topics.ZeroShotTopics`; None gives no confounder.
    patch_outcome : str, outcome object or None
        Scored unpatched on every prompt and correlated with Y (``meta["patch_outcome"]``); None skips it.
    **options
        Passed to :func:`~deconfound.lm.extract.extract` (``sites``, ``n_samples``, ``max_new_tokens``,
        ``temperature``, ``top_p``, ``seed``, ``batch_size``, ``shard_size``, ``progress``).

    Returns
    -------
    MediationData
        Saved to ``out_dir / "data"``; ``meta["treatment"]`` holds the instrument and rule.
    """
    from .extract import extract
    from .scorers import get_scorer

    frame = read_prompts(prompts, text_column=text_column)
    texts = _column(frame, text_column, "text")
    empty = np.flatnonzero(~texts.map(lambda v: isinstance(v, str) and bool(v.strip())).to_numpy())
    if empty.size:
        raise DataError(f"text column {text_column!r}: expected non-empty strings, got {texts.iloc[empty[0]]!r} in "
                        f"row {int(empty[0])} ({empty.size} rows)")
    outcome = get_scorer() if outcome is None else get_scorer(outcome)
    outcome_column = outcome_column or getattr(outcome, "primary", None) or list(outcome.columns)[0]
    treatment = make_treatment(frame, text_column=text_column, treatment_column=treatment_column,
                               score_column=score_column, score_threshold=score_threshold,
                               score_quantile=score_quantile, scorer=treatment_scorer or outcome,
                               score_name=score_name)
    if topic_column is not None:
        labels = _column(frame, topic_column, "topic")
        if labels.isna().any():
            raise DataError(f"topic column {topic_column!r}: expected a label in every row, got "
                            f"{int(labels.isna().sum())} missing (first in row {int(np.flatnonzero(labels.isna())[0])})")
        topic_arg = labels.astype(str).tolist()
    elif isinstance(topics, str):
        if topics != "zero_shot":
            raise ValueError(f"topics: expected 'zero_shot', a labeller or None, got {topics!r}")
        from .topics import ZeroShotTopics

        topic_arg = ZeroShotTopics()
    else:
        topic_arg = topics
    ids = None if id_column is None else _column(frame, id_column, "id").astype(str).tolist()
    columns = None
    if group_column is not None:
        group = _column(frame, group_column, "group")
        if group.isna().any():
            raise DataError(f"group column {group_column!r}: expected a value in every row, got "
                            f"{int(group.isna().sum())} missing")
        columns = pd.DataFrame({"group": group.astype(str).to_numpy()})
    source = {"text_column": text_column, "topic_column": topic_column, "id_column": id_column,
              "group_column": group_column, "n_groups": None if columns is None else int(columns.group.nunique()),
              "file": None if isinstance(prompts, pd.DataFrame) else str(Path(prompts).expanduser().resolve())}
    return extract(model, texts.tolist(), outcome=outcome, outcome_column=outcome_column, topics=topic_arg,
                   treatment=treatment, ids=ids, out_dir=out_dir, patch_outcome=patch_outcome, columns=columns,
                   meta={"prompts": source}, **options)
