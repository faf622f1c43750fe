"""Checks that come with every patching fit: how far a mean patch is from the NIE, and how far the donor
activations are from the activations the patched prompts produce themselves. Used by ``patching.py``."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..results import MediationResult

MEAN_PATCH = "mean-patch contrast"
OFF_DISTRIBUTION_PCT = 99.0  # a donor farther than this percentile of the natural prompts' distances is flagged


class PatchingResult(MediationResult):
    """A :class:`MediationResult` whose ``summary()`` and ``to_frame()`` name the patching estimand.

    With a mean donor (``mean``, ``eb_mean``, ``topic_mean``) the ``("nie", arm)`` rows hold the mean-patch
    contrast g(q) - g(q; do(h = donor mean)), which equals the NIE only when g is affine in h; ``to_frame()``
    says so in an ``estimand`` column, and the summary's header names it.
    """

    def _estimand(self, kind: str) -> str:
        if kind == "nie":
            return self.settings.get("estimand", "NIE")
        return {"nde": "TE - " + self.settings.get("estimand", "NIE"), "te": "TE",
                "prop_mediated": self.settings.get("estimand", "NIE") + " / TE"}.get(kind, kind)

    def to_frame(self) -> pd.DataFrame:
        frame = super().to_frame()
        return frame.assign(estimand=[self._estimand(k) for k in frame.effect])

    def _header(self) -> list[tuple[str, str]]:
        rows = super()._header()
        name = self.settings.get("estimand", "NIE")
        text = (f"{name} in the ACME rows (not the NIE unless g is affine in the activation)" if name == MEAN_PATCH
                else "NIE (ACME), NDE (ADE), TE")
        return [(k, text) if k == "Estimand" else (k, v) for k, v in rows]


def donor_distance(natural: np.ndarray, donors: np.ndarray, *, k: int = 10) -> dict:
    """How far ``donors`` lie from ``natural`` activations (rows), in a PCA-reduced Mahalanobis distance.

    The PCA (``k`` components, fewer when the data have fewer) is fitted on ``natural``; each row's distance is
    ``sqrt(sum_c z_c^2 / lambda_c)``. ``percentile`` is the share (in %) of the natural rows' own distances at or
    below the donor's (the farthest donor when there are several); ``off_distribution`` flags a donor beyond the
    99th percentile.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x = rng.normal(size=(200, 5))
    >>> donor_distance(x, x.mean(0, keepdims=True))["off_distribution"]
    False
    """
    x = np.asarray(natural, dtype=np.float64)
    d = np.atleast_2d(np.asarray(donors, dtype=np.float64))
    mu = x.mean(axis=0)
    xc = x - mu
    _, sv, vt = np.linalg.svd(xc, full_matrices=False)
    lam = sv**2 / max(len(x) - 1, 1)
    keep = lam > 1e-12 * max(lam.max(initial=0.0), 1e-300)
    k = int(min(k, keep.sum()))
    if k < 1:
        return {"distance": np.nan, "percentile": np.nan, "off_distribution": False, "components": 0}
    basis, scale = vt[:k], np.sqrt(lam[:k])
    nat = np.sqrt((((xc @ basis.T) / scale) ** 2).sum(axis=1))
    dist = np.sqrt(((((d - mu) @ basis.T) / scale) ** 2).sum(axis=1)).max()
    return {"distance": float(dist), "percentile": float(100.0 * np.mean(nat <= dist)),
            "off_distribution": bool(dist > np.percentile(nat, OFF_DISTRIBUTION_PCT)), "components": k}


def exact_check(patcher, unit, prompts, probs, donor_rows, pool_m, *, n_check, n_donors, sign, rng) -> dict:
    """Gap between the exact NIE and the mean-patch contrast, estimated on a subsample of targets.

    Targets (``prompts``, patcher rows) are sampled with replacement with probabilities ``probs`` (their weights
    in the estimate); each gets ``S = n_donors`` donors drawn from its donor weights ``donor_rows[i]``, and is
    patched with each of them and with their mean. A target's gap is
    ``sign * S / (S - 1) * (g(mean of its S donors) - mean of g(donor))``: the Jensen gap of its donor sample,
    scaled so that it is unbiased for ``exact - mean patch`` when g is quadratic in the activation, exactly 0
    when g is affine, and a second-order estimate otherwise. The mean over targets estimates the gap of the
    reported effect; the SE is their SD / sqrt(n_check) (it includes the donor sampling).
    """
    s_don = int(n_donors)
    pick = rng.choice(len(prompts), size=int(n_check), p=probs)
    donors = np.stack([rng.choice(donor_rows.shape[1], size=s_don, p=donor_rows[i]) for i in pick])
    values = pool_m[donors]  # (n_check, S, d)
    rows = np.repeat(prompts[pick], s_don + 1)
    batch = np.concatenate([values, values.mean(axis=1, keepdims=True)], axis=1).reshape(len(rows), -1)
    scores = patcher.evaluate([(unit, rows, batch)])[0].scores.reshape(len(pick), s_don + 1)
    per_target = sign * s_don / (s_don - 1) * (scores[:, -1] - scores[:, :-1].mean(axis=1))
    se = float(np.std(per_target, ddof=1) / np.sqrt(len(pick))) if len(pick) > 1 else np.nan
    return {"exact_gap": float(per_target.mean()), "exact_gap_se": se, "exact_check_prompts": int(n_check),
            "exact_check_donors": s_don, "patched_rows": int(len(rows))}
