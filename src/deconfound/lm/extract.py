"""Prompts -> MediationData: activations, sampled continuations, toxicity and topics.

For every prompt :func:`extract` records

- the mediators: one unit per site and layer (``"mlp_out.L12"``), the
  activation at the last prompt token, float32;
- the outcome Y: the mean of the outcome scorer's toxicity column over
  ``n_samples`` sampled continuations (their text is kept too);
- the treatment T: prompt toxicity >= threshold, from a given score
  (e.g. Perspective) where there is one and from a scorer otherwise;
- the confounders: the topic label and the soft topic probabilities.

The work is cut into shards of ``shard_size`` prompts. Each finished shard is
written atomically (a temporary file, then ``os.replace``), so a run that is
killed can be started again with the same ``out_dir``: finished shards are
skipped and the result is the same, bit for bit, as an uninterrupted run.
Sampling uses one random stream per (prompt, sample), seeded from
``SeedSequence(seed, spawn_key=(stream_key(prompt_id), sample))``, so the draws
depend on the prompt's id only: not on batching, shard boundaries, the order of
the prompts or which other prompts are extracted.

Layout of ``out_dir``::

    run.json                 settings; a re-run with other settings is refused
    shards/shard-00000.npz   one file per shard
    data/                    the MediationData (MediationData.load(out_dir / "data"))
    prompts.parquet          per prompt: text, prompt score and its source, T, Y, topic
    continuations.parquet    per continuation: text and every scorer column
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import MediationData
from ..errors import DataError
from .sampling import (  # noqa: F401 - re-exported: the engine and tests import them from here
    BatchResult, default_ids, eos_ids, forward_kwargs, run_batch, sample_tokens, sample_uniforms, stream_key,
)
from .models import as_loaded
from .sites import expand_sites

SHARD_PATTERN = "shard-{:05d}.npz"
SEEDING = "numpy SeedSequence(seed, spawn_key=(stream_key(prompt_id), sample)) per continuation"


@dataclass(frozen=True)
class Treatment:
    """How the treatment T is made from prompt toxicity.

    Parameters
    ----------
    scores : array of shape (n,), optional
        Given prompt toxicity (e.g. Perspective), NaN where absent. Prompts
        without a given score are scored by ``scorer``.
    source : str, optional
        What the given scores are (e.g. ``"perspective"``, ``"column:label"``);
        recorded in the metadata. Required with ``scores``: the metadata never
        guesses where a score came from.
    threshold : float
        T = 1 when the prompt toxicity is >= threshold.
    scorer : object, optional
        Scorer for prompts without a given score; default the outcome scorer.
    column : str
        The scorer column used as prompt toxicity.
    provenance : dict, optional
        More about how T was made (instrument, column, quantile...), stored
        as it is in ``meta["treatment"]``.
    """

    scores: object = None
    source: str | None = None
    threshold: float = 0.5
    scorer: object = None
    column: str = "toxic"
    provenance: dict | None = None


# ------------------------------------------------------------------------------------------
# Inputs


def _check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str):
        raise DataError("prompts: expected a sequence of strings, got one string")
    out = list(prompts)
    if not out:
        raise DataError("prompts: expected at least one prompt, got none")
    for i, p in enumerate(out):
        if not isinstance(p, str) or not p.strip():
            raise DataError(f"prompts[{i}]: expected a non-empty string, got {p!r}")
    return out


def _check_scorer(scorer, name: str, column: str):
    for attr in ("name", "columns", "score"):
        if not hasattr(scorer, attr):
            raise TypeError(f"{name}: expected a scorer with .name, .columns and .score(texts), got "
                            f"{type(scorer).__name__} without .{attr}")
    columns = list(scorer.columns)
    if column not in columns:
        raise DataError(f"{name} column: expected one of {columns}, got {column!r}")
    return columns.index(column)


def _score(scorer, texts, name: str) -> np.ndarray:
    if not texts:
        return np.zeros((0, len(scorer.columns)))
    out = np.asarray(scorer.score(list(texts)), dtype=float)
    if out.shape != (len(texts), len(scorer.columns)):
        raise DataError(f"{name} {scorer.name}: expected scores of shape ({len(texts)}, {len(scorer.columns)}), "
                        f"got {out.shape}")
    return out


def _as_treatment(treatment, n: int) -> Treatment:
    if treatment is None:
        treatment = Treatment()
    elif not isinstance(treatment, Treatment):
        treatment = Treatment(scores=treatment, source="given scores")
    if treatment.scores is not None:
        if not treatment.source:
            raise ValueError("treatment source: expected a name for the given scores (e.g. 'perspective' or "
                             "'column:score'), got none")
        given = np.asarray(treatment.scores, dtype=float).reshape(-1)
        if given.shape[0] != n:
            raise DataError(f"treatment scores: expected {n} values (NaN where absent), got {given.shape[0]}")
        treatment = dataclasses.replace(treatment, scores=given)
    return treatment


def _prob_column(topic: str) -> str:
    """``p_topic_<name>``, the same rule as :meth:`deconfound.lm.topics.TopicLabels.to_frame`."""
    return "p_topic_" + re.sub(r"[^A-Za-z0-9_]", "_", str(topic))


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("deconfound", "numpy", "pandas", "torch", "transformers", "tokenizers", "safetensors"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_run(out_dir: Path, settings: dict) -> None:
    path = out_dir / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise DataError(
                f"{out_dir}: this out_dir holds a run with other settings ({', '.join(diff)}); "
                f"{k}: expected {old.get(k)!r} (on disk), got {settings.get(k)!r}. Use a new out_dir."
            )
        return
    _atomic_write(path, lambda f: f.write(json.dumps(settings, indent=2).encode()))


# ------------------------------------------------------------------------------------------
# The driver


def _compute_shard(lm, prompts, ids, index, *, units, outcome, outcome_col, treatment, t_col,
                   n_samples, max_new_tokens, seed, temperature, top_p, batch_size, bar) -> dict:
    texts = [prompts[i] for i in index]
    m = len(index)
    lengths = [len(x) for x in lm.tokenizer(texts)["input_ids"]]
    order = sorted(range(m), key=lambda j: lengths[j])  # less padding; stable, so deterministic
    acts = {u: np.zeros((m, 0), np.float32) for u in units}
    conts = [[""] * n_samples for _ in range(m)]
    ntok = np.zeros((m, n_samples), np.int32)
    for start in range(0, m, batch_size):
        sel = order[start:start + batch_size]
        res = run_batch(lm, [texts[j] for j in sel], [ids[index[j]] for j in sel], units=units, n_samples=n_samples,
                        max_new_tokens=max_new_tokens, seed=seed, temperature=temperature, top_p=top_p)
        for u in units:
            if acts[u].shape[1] == 0:
                acts[u] = np.zeros((m, res.activations[u].shape[1]), np.float32)
            acts[u][sel] = res.activations[u]
        for r, j in enumerate(sel):
            conts[j] = res.texts[r]
            ntok[j] = [len(t) for t in res.tokens[r]]
        if bar is not None:
            bar.update(len(sel))
    flat = [c for row in conts for c in row]
    cscores = _score(outcome, flat, "outcome scorer").reshape(m, n_samples, -1)
    y_all = cscores.mean(axis=1)
    pscore = np.full(m, np.nan) if treatment.scores is None else treatment.scores[index].copy()
    source = np.where(np.isnan(pscore), f"scorer:{(treatment.scorer or outcome).name}", treatment.source or "")
    need = np.nonzero(np.isnan(pscore))[0]
    if need.size:
        pscorer = treatment.scorer or outcome
        pscore[need] = _score(pscorer, [texts[j] for j in need], "treatment scorer")[:, t_col]
    arrays = {
        "index": np.asarray(index, np.int64), "prompt_score": pscore, "score_source": source.astype(str),
        "t": (pscore >= treatment.threshold).astype(np.int8), "y": y_all[:, outcome_col], "y_all": y_all,
        "cont_text": np.array(conts, dtype=str).reshape(m, n_samples), "cont_scores": cscores,
        "cont_ntokens": ntok,
    }
    for u in units:
        arrays[f"med::{u}"] = acts[u]
    return arrays


def extract(model, prompts, *, outcome, topics=None, sites=("mlp_out",), treatment=None, outcome_column="toxic",
            n_samples: int = 5, max_new_tokens: int = 20, temperature: float = 1.0, top_p: float = 0.9,
            seed: int = 0, out_dir, batch_size: int = 16, shard_size: int = 64, ids=None,
            progress: bool = True, patch_outcome=None, columns=None, meta=None) -> MediationData:
    """Run the model on prompts and build a :class:`~deconfound.data.MediationData`.

    Parameters
    ----------
    model : LoadedModel or (model, tokenizer)
    prompts : sequence of str
    outcome : scorer
        Has ``.name``, ``.columns`` and ``.score(texts) -> (n, k)``; Y is the
        mean of column ``outcome_column`` over the sampled continuations.
    topics : topic labeller, sequence of labels, or None
        A labeller has ``.name`` and ``.label(texts)`` returning ``.labels``,
        ``.probs``, ``.topics`` and ``.margin``; the confounders are then
        ``topic`` and ``p_topic_<name>`` per topic. A sequence of labels gives
        the ``topic`` column only.
    sites : str or sequence
        Site specs; ``"mlp_out"`` means every layer. One unit per site and layer.
    treatment : Treatment, array of given prompt scores (NaN where absent), or None
        None scores every prompt with the outcome scorer; threshold 0.5.
    outcome_column : str
    n_samples, max_new_tokens, temperature, top_p : sampling settings
        The default nucleus ``top_p=0.9`` follows RealToxicityPrompts.
    seed : int
        Seeds every (prompt, sample) stream.
    out_dir : path
        Where shards and results go; a re-run with the same settings resumes.
    batch_size, shard_size : int
        Prompts per forward pass and per shard file.
    ids : sequence, optional
        Prompt ids (default ``p000000``, ``p000001``, ...).
    progress : bool
        Show a tqdm progress bar.
    patch_outcome : str or outcome object, optional
        Also score every prompt with this patching outcome (e.g.
        ``"next_token_mass"``, see :mod:`deconfound.lm.outcomes`), unpatched:
        the scores go to ``prompts.parquet`` (column ``patch_outcome``) and
        their Pearson and Spearman correlations with Y to
        ``meta["patch_outcome"]``. A correlation below 0.3 in absolute value
        warns: the patching outcome then measures something else than Y.
    columns : DataFrame, optional
        Extra per-prompt columns (e.g. a group) written to ``prompts.parquet``.
    meta : dict, optional
        Extra entries for the data's metadata (e.g. where the prompts came from).

    Returns
    -------
    MediationData
        Also saved to ``out_dir / "data"``.
    """
    from tqdm.auto import tqdm

    lm = as_loaded(model)
    prompts = _check_prompts(prompts)
    n = len(prompts)
    for name, value in (("n_samples", n_samples), ("max_new_tokens", max_new_tokens),
                        ("batch_size", batch_size), ("shard_size", shard_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    if not 0 < top_p <= 1 or temperature < 0:
        raise ValueError(f"sampling: expected 0 < top_p <= 1 and temperature >= 0, got {top_p}, {temperature}")
    units = [s.name for s in expand_sites(lm.model, sites)]
    outcome_col = _check_scorer(outcome, "outcome", outcome_column)
    treatment = _as_treatment(treatment, n)
    t_col = _check_scorer(treatment.scorer or outcome, "treatment scorer", treatment.column)
    ids = np.asarray(default_ids(n) if ids is None else list(ids)).astype(str)
    if ids.shape != (n,) or len(set(ids.tolist())) != n:
        raise DataError(f"ids: expected {n} unique ids, got {ids.shape[0]} with {len(set(ids.tolist()))} unique")
    topic_x, topic_meta, margin = _topic_columns(topics, prompts)
    out_dir = Path(out_dir)
    shard_dir = out_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in shard_dir.glob(".shard-*.tmp-*"):
        stale.unlink(missing_ok=True)
    settings = {
        "model_id": lm.model_id, "model_fingerprint": lm.fingerprint,
        "model_dtype": str(lm.dtype).replace("torch.", ""), "units": units,
        "prompts_sha256": _digest(prompts, ids.tolist()), "n_prompts": n,
        "outcome": outcome.name, "outcome_column": outcome_column,
        "treatment": {"source": treatment.source, "threshold": treatment.threshold, "column": treatment.column,
                      "scorer": getattr(treatment.scorer, "name", None),
                      "scores_sha256": None if treatment.scores is None else _digest(treatment.scores)},
        "n_samples": int(n_samples), "max_new_tokens": int(max_new_tokens), "temperature": float(temperature),
        "top_p": float(top_p), "seed": int(seed), "seeding": SEEDING, "batch_size": int(batch_size), "shard_size": int(shard_size),
    }
    _check_run(out_dir, settings)
    n_shards = -(-n // shard_size)
    done = [s for s in range(n_shards) if (shard_dir / SHARD_PATTERN.format(s)).exists()]
    initial = sum(min(shard_size, n - s * shard_size) for s in done)
    bar = tqdm(total=n, initial=initial, unit="prompt", desc=f"extract {lm.model_id}", disable=not progress)
    try:
        for s in range(n_shards):
            path = shard_dir / SHARD_PATTERN.format(s)
            if path.exists():
                continue
            index = list(range(s * shard_size, min(n, (s + 1) * shard_size)))
            arrays = _compute_shard(
                lm, prompts, ids, index, units=units, outcome=outcome, outcome_col=outcome_col, treatment=treatment,
                t_col=t_col, n_samples=n_samples, max_new_tokens=max_new_tokens, seed=seed, temperature=temperature, top_p=top_p,
                batch_size=batch_size, bar=bar)
            _atomic_write(path, lambda f, a=arrays: np.savez(f, **a))
    finally:
        bar.close()
    extra_meta = dict(meta or {})
    meta = {
        **extra_meta,
        "source": "deconfound.lm.extract",
        "model": {"id": lm.model_id, "arch": lm.arch, "fingerprint": lm.fingerprint,
                  "n_layers": lm.n_layers, "d_model": lm.d_model, "d_mlp": lm.d_mlp, "provenance": lm.provenance},
        "sites": units, "position": "last prompt token (left padding)",
        "outcome": {"scorer": outcome.name, "column": outcome_column, "columns": list(outcome.columns),
                    "aggregate": "mean over samples", "n_samples": int(n_samples),
                    "max_new_tokens": int(max_new_tokens), "temperature": float(temperature), "top_p": float(top_p)},
        "seed": int(seed), "seeding": SEEDING,
        "topics": topic_meta, "versions": _versions(), "settings": settings,
    }
    patch = None
    if patch_outcome is not None:
        from .patch import Patcher

        patcher = Patcher(lm, prompts, outcome=patch_outcome, ids=ids, batch_size=max(16, batch_size))
        patch = (patcher.base_scores(), patcher.describe())
    data = _assemble(out_dir, prompts, ids, units, meta, treatment, topic_x, margin, patch, columns)
    return data


def outcome_agreement(patch_scores, y, describe=None, *, weak: float = 0.3) -> dict:
    """Pearson and Spearman correlations of a patching outcome with Y; warns when |Pearson r| < ``weak``."""
    import warnings

    from scipy import stats

    g, y = np.asarray(patch_scores, float), np.asarray(y, float)
    ok = np.isfinite(g) & np.isfinite(y)
    defined = ok.sum() > 2 and np.ptp(g[ok]) > 0 and np.ptp(y[ok]) > 0
    r = float(stats.pearsonr(g[ok], y[ok])[0]) if defined else float("nan")
    rho = float(stats.spearmanr(g[ok], y[ok])[0]) if defined else float("nan")
    out = {**(describe or {}), "pearson_r": r, "spearman_r": rho, "n": int(ok.sum()), "weak_below": weak,
           "weak": bool(not np.isfinite(r) or abs(r) < weak),
           "mean": float(np.mean(g[ok])) if ok.any() else float("nan")}
    if out["weak"]:
        name = (describe or {}).get("outcome", "the patching outcome")
        warnings.warn(f"patching outcome {name}: expected a correlation with Y (the continuation outcome) of at "
                      f"least {weak} in absolute value, got Pearson r = {r:.3f} (Spearman {rho:.3f}, n = "
                      f"{out['n']}); patching effects on it may not speak to Y", stacklevel=3)
    return out


def _topic_columns(topics, prompts):
    """Label all prompts once: the confounder frame and its metadata."""
    n = len(prompts)
    if topics is None:
        return pd.DataFrame(index=range(n)), {"labeller": None}, None
    if not hasattr(topics, "label"):
        labels = np.asarray(list(topics), dtype=object)
        if labels.shape != (n,) or pd.isna(labels).any():
            raise DataError(f"topics: expected {n} labels without missing values, or a labeller, got "
                            f"{labels.shape[0]} labels ({int(pd.isna(labels).sum())} missing)")
        labels = labels.astype(str)
        return pd.DataFrame({"topic": labels}), {"labeller": "user", "topics": sorted(set(labels.tolist()))}, None
    lab = topics.label(list(prompts))
    names = [str(t) for t in lab.topics]
    labels = np.asarray(lab.labels).astype(str)
    probs = np.asarray(lab.probs, dtype=float)
    margin = np.asarray(lab.margin, dtype=float)
    if labels.shape != (n,) or probs.shape != (n, len(names)) or margin.shape != (n,):
        raise DataError(f"topic labeller {topics.name}: expected labels ({n},), probs ({n}, {len(names)}) and "
                        f"margin ({n},), got {labels.shape}, {probs.shape} and {margin.shape}")
    cols = [_prob_column(nm) for nm in names]
    if len(set(cols)) != len(cols):
        raise DataError(f"topic names: expected names that stay distinct as column names, got {names}")
    frame = pd.DataFrame({"topic": labels, **{c: probs[:, j] for j, c in enumerate(cols)}})
    return frame, {"labeller": str(topics.name), "topics": names, "prob_columns": cols}, margin


def _assemble(out_dir: Path, prompts, ids, units, meta, treatment, topic_x, margin, patch=None,
              columns=None) -> MediationData:
    n = len(prompts)
    parts = []
    for path in sorted((out_dir / "shards").glob("shard-*.npz")):
        with np.load(path, allow_pickle=False) as z:
            parts.append({k: z[k] for k in z.files})
    index = np.concatenate([p["index"] for p in parts]) if parts else np.zeros(0, np.int64)
    if index.shape[0] != n or not np.array_equal(np.sort(index), np.arange(n)):
        dup = int(index.shape[0] - np.unique(index).shape[0])
        raise DataError(f"{out_dir}: expected shards covering prompts 0..{n - 1} once, got {index.shape[0]} rows "
                        f"({dup} duplicates, {n - np.unique(index).shape[0]} missing)")
    order = np.argsort(index, kind="stable")

    def cat(key):
        return np.concatenate([p[key] for p in parts])[order]

    t, y, pscore, source = cat("t"), cat("y"), cat("prompt_score"), cat("score_source")
    counts = {str(k): int(v) for k, v in zip(*np.unique(source, return_counts=True))}
    rule = (treatment.provenance or {}).get("rule", f"prompt toxicity >= {treatment.threshold}")
    meta["treatment"] = {"rule": rule, "threshold": treatment.threshold,
                         "score_column": treatment.column, "given_source": treatment.source,
                         "sources": counts, **(treatment.provenance or {})}
    if patch is not None:
        meta["patch_outcome"] = outcome_agreement(patch[0], y, patch[1])
    mediators = {u: cat(f"med::{u}") for u in units}
    x = topic_x
    data = MediationData.from_arrays(t=t, y=y, mediators=mediators, x=x if len(x.columns) else None,
                                     meta=meta, ids=ids, dtype="float32")  # activations: float32 on purpose
    data.save(out_dir / "data")
    table = pd.DataFrame({"id": ids, "index": np.arange(n), "prompt": prompts, "prompt_score": pscore,
                          "score_source": source, "t": t, "y": y})
    if "topic" in x:
        table["topic"] = x["topic"].astype(str).to_numpy()
    if margin is not None:
        table["topic_margin"] = margin
    y_all = cat("y_all")
    for j, col in enumerate(meta["outcome"]["columns"]):
        table[f"outcome_{col}"] = y_all[:, j]
    if patch is not None:
        table["patch_outcome"] = np.asarray(patch[0], float)
    for col in ([] if columns is None else columns.columns):
        if col in table:
            raise DataError(f"columns: expected names other than the table's own {list(table.columns)}, got {col!r}")
        table[col] = np.asarray(columns[col])
    texts, scores, ntok = cat("cont_text"), cat("cont_scores"), cat("cont_ntokens")
    s = texts.shape[1]
    conts = pd.DataFrame({"id": np.repeat(ids, s), "index": np.repeat(np.arange(n), s),
                          "sample": np.tile(np.arange(s), n), "text": texts.reshape(-1),
                          "n_tokens": ntok.reshape(-1)})
    for j, col in enumerate(meta["outcome"]["columns"]):
        conts[col] = scores[:, :, j].reshape(-1)
    _atomic_write(out_dir / "prompts.parquet", lambda f: table.to_parquet(f, index=False))
    _atomic_write(out_dir / "continuations.parquet", lambda f: conts.to_parquet(f, index=False))
    return data


def load_extraction(out_dir) -> MediationData:
    """The MediationData written by :func:`extract` into ``out_dir``."""
    return MediationData.load(Path(out_dir) / "data")
