"""The unit-free part of one patching fit: kept rows, targets and donor pool, and donor weights per replicate."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import DataError, PositivityError
from ..weights import balance_matrix, eb_att, eb_weights_batch, entropy_balance_batch


def _normalize(w: np.ndarray) -> np.ndarray:
    s = w.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(s > 0, w / np.where(s > 0, s, 1.0), np.nan)


class _Design:
    """Everything about one fit that does not depend on the unit: rows, weights, donor weights."""

    def __init__(self, est, data, adj, base: np.ndarray):
        self.est = est
        t = data.t.astype(int)
        self.donor_cols = list(adj.first_stage)
        self.outcome_cols = list(dict.fromkeys([*adj.second_stage, *adj.total]))
        self.adjusted = bool(self.donor_cols)
        strategy = est.donors
        if not self.adjusted and strategy in ("eb_mean", "topic_mean"):
            strategy = "mean"  # no confounder in the graph: every adjusted strategy is the plain mean
        self.strategy = strategy
        self.kept, self.dropped = self._positivity(data, t)
        self.rows = np.flatnonzero(self.kept)
        self.t = t[self.rows]
        self.x = data.x.iloc[self.rows].reset_index(drop=True)
        self.base = base[self.rows]
        ablation = est.direction == "ablation"
        self.targets = np.flatnonzero(self.t == (1 if ablation else 0))
        self.pool = np.flatnonzero(self.t == (0 if ablation else 1))
        self.mode = self._mode()
        if self.mode == "categorical":
            cats = [c for c in self.donor_cols if c in data.categorical_confounders()]
            codes = self.x[cats].astype(str).agg("\x1f".join, axis=1) if len(cats) > 1 else self.x[cats[0]].astype(str)
            self.levels, self.codes = np.unique(codes.to_numpy(), return_inverse=True)
        elif self.mode == "soft":
            self.bm = balance_matrix(self.x[self.donor_cols]).values

    # ---- checks ------------------------------------------------------------------------------
    def _positivity(self, data, t):
        """Rows kept after the positivity check of the ATT weights (treated topics need controls)."""
        cols = list(dict.fromkeys(self.donor_cols + self.outcome_cols))
        kept = np.ones(len(t), bool)
        self.eb_ess = None
        dropped = pd.DataFrame(columns=["variable", "level", "n1", "n0"])
        if cols:
            fit = eb_att(data.x[cols], t, drop_unsupported=self.est.drop_unsupported)
            kept, dropped = fit.kept.copy(), fit.dropped
            self.eb_ess = float(fit.diagnostics.loc["control", "ess"])
        if t[kept].sum() < 1 or (1 - t[kept]).sum() < 1:
            raise PositivityError("patching: expected treated and control prompts left after dropping topics "
                                  f"without overlap, got n1={int(t[kept].sum())}, n0={int((1 - t[kept]).sum())}")
        return kept, dropped

    def _mode(self) -> str:
        if self.strategy in ("mean", "eb_mean") or not self.adjusted:
            return "global"
        cats = [c for c in self.donor_cols if isinstance(self.x[c].dtype, pd.CategoricalDtype)]
        mode = self.est.conditional
        if mode == "auto":
            mode = "categorical" if cats else "soft"
        if mode == "categorical" and not cats:
            raise DataError(f"conditional='categorical': expected a categorical confounder among {self.donor_cols}, "
                            "got none; use conditional='soft'")
        return mode

    # ---- weights -----------------------------------------------------------------------------
    def att_weights(self, counts: np.ndarray, cols) -> np.ndarray:
        """(B, n) weights summing to 1 within each arm: treated by counts, controls by EB on ``cols``."""
        if not cols:
            w = counts.astype(float).copy()
            for arm in (0, 1):
                w[:, self.t == arm] = _normalize(w[:, self.t == arm])
            return w
        return eb_weights_batch(self.x[cols], self.t, counts, estimand="ATT", on_failure="nan").weights

    def donor_weights(self, q: np.ndarray, w_att: np.ndarray):
        """Donor weights for one replicate: (Wu (K, n_pool), row of Wu for each target (n_targets,))."""
        nt = len(self.targets)
        qp = q[self.pool].astype(float)
        if self.mode == "global":
            if self.strategy == "eb_mean" and self.est.direction == "ablation":
                w = w_att[self.pool]
            else:
                w = _normalize(qp)
            return w[None, :], np.zeros(nt, np.int64)
        if self.mode == "categorical":
            pool_codes = self.codes[self.pool]
            wu = np.stack([np.where(pool_codes == k, qp, 0.0) for k in range(len(self.levels))])
            return _normalize(wu), self.codes[self.targets]
        res = entropy_balance_batch(self.bm[self.pool], self.bm[self.targets], np.broadcast_to(qp, (nt, len(qp))),
                                    target_weights=np.eye(nt), on_failure="nan")
        return res.weights, np.arange(nt)


def _feasible(donor_w, v_b) -> bool:
    """True when every target present in the replicate (weight v_b > 0) has finite donor weights."""
    wu, m = donor_w
    return bool(np.isfinite(wu[m][v_b > 0]).all())
