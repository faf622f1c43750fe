"""The patching engine against a naive implementation and an exact enumeration.

Naive: one full forward of the whole prompt (and continuation) per patched variant, batch 1, with the one
hook of ``deconfound.lm.hooks.patch``. Exact: on the tiny word-level vocabulary with 2-token continuations,
every continuation is enumerated, so E[score] under the patch is a finite sum.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.errors import DataError, ModelSiteError  # noqa: E402
from deconfound.lm.extract import run_batch  # noqa: E402
from deconfound.lm.hooks import capture, patch  # noqa: E402
from deconfound.lm.models import TINY_ARCHS, tiny_model  # noqa: E402
from deconfound.lm.sites import bind  # noqa: E402
from deconfound.lm._resume import base_rows  # noqa: E402
from deconfound.lm.patch import Generate, NextTokenMass, Patcher, PatchUnit, Reweight, as_unit  # noqa: E402

pytestmark = pytest.mark.lm

PROMPTS = ["the game was great and the team played", "you are a stupid idiot", "the doctor said",
           "shut up you dumb fool nobody likes", "he walks the dog in the park every"]
BAD = ["stupid", "idiot", "dumb", "fool", "hate", "ugly", "awful", "worst", "useless", "pathetic"]


class WordScorer:
    """A deterministic scorer: 0.5 per bad word plus 0.1 per word (two columns, to test column choice)."""

    name = "words"
    columns = ["length", "toxic"]
    primary = "toxic"

    def score(self, texts):
        out = np.zeros((len(texts), 2))
        for r, text in enumerate(texts):
            words = text.split()
            out[r] = [len(words), 0.5 * sum(w in BAD for w in words) + 0.1 * len(words)]
        return out


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def lm(request):
    return tiny_model(request.param, seed=3, n_layers=3)


def _ids(lm):
    return lm.tokenizer.convert_tokens_to_ids(BAD)


def _full_vector(lm, prompt, unit, values):
    """The whole site vector with the unit's coordinates replaced (what the naive patch writes)."""
    if unit.coords is None:
        return torch.as_tensor(values, dtype=torch.float32)
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad(), capture(lm, unit.site.name) as cap:
        lm.model(**enc)
    full = cap[unit.site.name][0].clone()
    full[list(unit.coords)] = torch.as_tensor(values, dtype=torch.float32)
    return full


def naive_mass(lm, prompt, unit, values, ids):
    enc = lm.tokenizer([prompt], return_tensors="pt")
    with torch.no_grad():
        if unit is None:
            logits = lm.model(**enc).logits[0, -1]
        else:
            with patch(lm, unit.site.name, _full_vector(lm, prompt, unit, values)[None]):
                logits = lm.model(**enc).logits[0, -1]
    return logits.softmax(-1)[ids].sum().item()


def test_next_token_mass_equals_naive_full_recompute(lm):
    rng = np.random.default_rng(0)
    p = Patcher(lm, PROMPTS, outcome=NextTokenMass(_ids(lm)), batch_size=4, cache_prompts=2)
    units = [as_unit("mlp_out.L0"), as_unit("resid_post.L2"), as_unit("attn_out.L1"),
             as_unit(("mlp_neurons.L1", [3, 17, 40])), as_unit("mlp_out.L2[0,5]")]
    reqs = []
    for unit in units:
        pidx = rng.integers(0, len(PROMPTS), size=6)
        reqs.append((unit, pidx, rng.normal(scale=2.0, size=(6, p.dim(unit)))))
    results = p.evaluate(reqs)  # rows of all units mixed in shared batches; evictions (cache_prompts=2)
    for (unit, pidx, vals), res in zip(reqs, results):
        naive = [naive_mass(lm, PROMPTS[i], unit, v, _ids(lm)) for i, v in zip(pidx, vals)]
        np.testing.assert_allclose(res.scores, naive, atol=1e-5, rtol=0)
        assert res.unit == unit
    base = p.base_scores()
    np.testing.assert_allclose(base, [naive_mass(lm, q, None, None, _ids(lm)) for q in PROMPTS], atol=1e-5)


def test_own_activation_gives_zero_effect_and_activations_match_capture(lm):
    p = Patcher(lm, PROMPTS, outcome=NextTokenMass(_ids(lm)), batch_size=3)
    acts = p.activations(["mlp_out.L1", "mlp_neurons.L2[1,2]"])
    enc = lm.tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad(), capture(lm, ["mlp_out.L1", "mlp_neurons.L2"]) as cap:
        lm.model(**enc, position_ids=(enc["attention_mask"].cumsum(-1) - 1).clamp(min=0))
    np.testing.assert_allclose(acts["mlp_out.L1"], cap["mlp_out.L1"].numpy(), atol=1e-5)
    np.testing.assert_allclose(acts["mlp_neurons.L2[1,2]"], cap["mlp_neurons.L2"].numpy()[:, [1, 2]], atol=1e-5)
    n = len(PROMPTS)
    for name, vals in acts.items():
        np.testing.assert_allclose(p.scores(name, np.arange(n), vals), p.base_scores(), atol=1e-7)


def test_gradients_match_finite_differences(lm):
    p = Patcher(lm, PROMPTS[:3], outcome=NextTokenMass(_ids(lm)))
    rng = np.random.default_rng(1)
    vals = rng.normal(size=(3, p.dim("mlp_out.L1")))
    res = p.evaluate([("mlp_out.L1", np.arange(3), vals)], grad=True)[0]
    eps = 1e-2
    for k in (0, 7):
        e = np.zeros_like(vals)
        e[:, k] = eps
        fd = (p.scores("mlp_out.L1", np.arange(3), vals + e) - p.scores("mlp_out.L1", np.arange(3), vals - e)) / (2 * eps)
        np.testing.assert_allclose(res.grad[:, k], fd, rtol=2e-2, atol=1e-6)


def test_generate_equals_naive_patched_generation(lm):
    p = Patcher(lm, PROMPTS, outcome=Generate(WordScorer(), n_samples=6, max_new_tokens=4, seed=9), batch_size=12)
    vals = np.random.default_rng(2).normal(scale=3.0, size=(len(PROMPTS), p.dim("mlp_out.L0")))
    got = p.scores("mlp_out.L0", np.arange(len(PROMPTS)), vals)
    for i, prompt in enumerate(PROMPTS):
        with patch(lm, "mlp_out.L0", torch.as_tensor(vals[i], dtype=torch.float32)[None]):
            res = run_batch(lm, [prompt], [f"p{i:06d}"], n_samples=6, max_new_tokens=4, seed=9)
        assert got[i] == pytest.approx(WordScorer().score(res.texts[0])[:, 1].mean(), abs=1e-9)
    # common random numbers: a patch that changes nothing gives exactly the unpatched scores
    own = p.activations("mlp_out.L0")["mlp_out.L0"]
    np.testing.assert_array_equal(p.scores("mlp_out.L0", np.arange(len(PROMPTS)), own), p.base_scores())


def naive_logp(lm, prompt, cont, unit=None, values=None):
    ids = lm.tokenizer(prompt)["input_ids"]
    x = torch.as_tensor([ids + cont[:-1]])
    with torch.no_grad():
        if unit is None:
            logits = lm.model(input_ids=x).logits[0]
        else:
            with patch(lm, unit, torch.as_tensor(values, dtype=torch.float32)[None], positions=len(ids) - 1):
                logits = lm.model(input_ids=x).logits[0]
    lp = logits.double().log_softmax(-1)
    return sum(lp[len(ids) - 1 + k, tok].item() for k, tok in enumerate(cont))


def test_reweight_equals_naive_importance_weights(lm):
    out = Reweight(WordScorer(), n_samples=5, max_new_tokens=3, seed=4)
    p = Patcher(lm, PROMPTS[:3], outcome=out, batch_size=10)
    vals = np.random.default_rng(3).normal(scale=2.0, size=(3, p.dim("mlp_out.L1")))
    res = p.evaluate([("mlp_out.L1", np.arange(3), vals)])[0]
    for i, prompt in enumerate(PROMPTS[:3]):
        conts = out.tokens[i]
        base = np.array([naive_logp(lm, prompt, c) for c in conts])
        np.testing.assert_allclose(out.base_logp[i], base, atol=1e-4)
        lw = np.array([naive_logp(lm, prompt, c, "mlp_out.L1", vals[i]) for c in conts]) - base
        w = np.exp(lw - lw.max())
        w /= w.sum()
        assert res.scores[i] == pytest.approx(np.sum(w * out.y[i]), abs=1e-5)
        assert res.extras["ess"][i] == pytest.approx(1 / np.sum(w**2), rel=1e-4)
    # unpatched weights are 1 up to float32 rounding of log p, which depends on the batch's padding
    np.testing.assert_allclose(p.base_scores(), out.y.mean(axis=1), atol=1e-6)


@pytest.fixture(scope="module")
def oracle():
    """Exact E[score] over all 2-token continuations, for two prompts, unpatched and patched."""
    lm = tiny_model("llama", seed=5, n_layers=2)
    tok = lm.tokenizer
    vocab = len(tok)
    eos = tok.eos_token_id
    texts = [tok.decode([a] + ([] if b == eos else [b]), skip_special_tokens=True) if a != eos else ""
             for a in range(vocab) for b in range(vocab)]
    s = WordScorer().score(texts)[:, 1].reshape(vocab, vocab)
    prompts = PROMPTS[1:3]
    # push the last residual stream towards the bad words' (tied) embeddings: a patch that clearly matters
    emb = lm.model.get_input_embeddings().weight.detach().numpy()
    direction = emb[_ids(lm)].mean(axis=0)
    vals = []
    for prompt in prompts:
        with torch.no_grad(), capture(lm, "resid_post.L1") as cap:
            lm.model(**tok([prompt], return_tensors="pt"))
        vals.append(cap["resid_post.L1"][0].numpy() + 8 * direction / np.linalg.norm(direction))
    vals = np.array(vals)
    exact = {}
    for i, prompt in enumerate(prompts):
        ids = tok(prompt)["input_ids"]
        x = torch.cat([torch.as_tensor([ids] * vocab), torch.arange(vocab)[:, None]], dim=1)
        for key, value in (("base", None), ("patched", vals[i])):
            with torch.no_grad():
                if value is None:
                    logits = lm.model(input_ids=x).logits
                else:
                    v = torch.as_tensor(value, dtype=torch.float32)[None].expand(vocab, -1)
                    with patch(lm, "resid_post.L1", v, positions=len(ids) - 1):
                        logits = lm.model(input_ids=x).logits
            p1 = logits[0, -2].double().softmax(-1).numpy()
            p2 = logits[:, -1].double().softmax(-1).numpy()
            exact[key, i] = float(p1 @ (p2 * s).sum(axis=1))
            exact["mass", key, i] = float(p1[_ids(lm)].sum())
    return lm, prompts, vals, exact


def test_next_token_mass_equals_exact_value(oracle):
    lm, prompts, vals, exact = oracle
    p = Patcher(lm, prompts, outcome=NextTokenMass(_ids(lm)))
    np.testing.assert_allclose(p.base_scores(), [exact["mass", "base", i] for i in range(2)], atol=1e-6)
    np.testing.assert_allclose(p.scores("resid_post.L1", [0, 1], vals), [exact["mass", "patched", i] for i in range(2)],
                               atol=1e-6)


@pytest.mark.parametrize("kind", ["generate", "reweight"])
def test_sampled_outcomes_converge_to_exact_enumeration(oracle, kind):
    lm, prompts, vals, exact = oracle
    s = 2000
    cls = Generate if kind == "generate" else Reweight
    out = cls(WordScorer(), n_samples=s, max_new_tokens=2, seed=11)
    p = Patcher(lm, prompts, outcome=out, batch_size=s)
    base = p.base_scores()
    res = p.evaluate([("resid_post.L1", [0, 1], vals)])[0]
    for i in range(2):
        if kind == "generate":
            se_b = se_p = res.extras["mc_se"][i]
        else:
            sd = out.y[i].std()
            se_b, se_p = sd / np.sqrt(s), sd / np.sqrt(res.extras["ess"][i])
            assert not res.extras["flagged"][i]
        assert abs(base[i] - exact["base", i]) < 4 * se_b
        assert abs(res.scores[i] - exact["patched", i]) < 4 * se_p
        assert abs(exact["patched", i] - exact["base", i]) > 4 * se_p  # the patch matters


def test_units_and_inputs_are_checked():
    lm = tiny_model("llama", seed=0, n_layers=2)
    p = Patcher(lm, PROMPTS[:2], outcome=NextTokenMass([5, 6]))
    assert p.unit(1) == PatchUnit(as_unit("mlp_out.L1").site)
    assert p.unit("L1").name == "mlp_out.L1" and p.dim("mlp_neurons.L0[1,2,3]") == 3
    with pytest.raises(ModelSiteError, match="layer"):
        p.unit("mlp_out.L7")
    with pytest.raises(ModelSiteError, match="coordinates"):
        p.unit("mlp_out.L0[64]")
    with pytest.raises(DataError, match="expected shape"):
        p.scores("mlp_out.L0", [0, 1], np.zeros((2, 3)))
    with pytest.raises(DataError, match="prompt indices"):
        p.scores("mlp_out.L0", [0, 2], np.zeros((2, 64)))
    with pytest.raises(ValueError, match="position"):
        Patcher(lm, PROMPTS, position=0)
    with pytest.raises(ValueError, match="grad"):
        Patcher(lm, PROMPTS[:1], outcome=Generate(WordScorer(), n_samples=2)).evaluate(
            [("mlp_out.L0", [0], np.zeros(64))], grad=True)
    two = Patcher(lm.model, lm.tokenizer, PROMPTS[:2], outcome=NextTokenMass([5, 6]))
    np.testing.assert_allclose(two.base_scores(), p.base_scores(), atol=0)


# ---- entering the decoder stack at the patched layer ----------------------------------------------------------
SHORT = ["you are a stupid idiot", "the doctor said", "shut up you dumb fool", "he", "the game was great"]


def evaluate_counting_rows(lm, patcher, reqs, n_layers=4):
    """``patcher.evaluate(reqs)`` and, per call of each layer's MLP, (layer, rows it ran)."""
    layers_run = []
    hooks = [bind(lm.model, f"mlp_out.L{j}").module.register_forward_hook(
        lambda m, a, o, j=j: layers_run.append((j, a[0].shape[0]))) for j in range(n_layers)]
    try:
        return patcher.evaluate(reqs), layers_run
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_resumed_rows_equal_naive_full_recompute_on_every_architecture(arch):
    """Rows of every layer and site kind mixed in one batch, a one-token prompt among them (empty prefix)."""
    lm = tiny_model(arch, seed=7, n_layers=4)
    ids = _ids(lm)
    rng = np.random.default_rng(4)
    p = Patcher(lm, SHORT, outcome=NextTokenMass(ids), batch_size=64)
    units = [as_unit("mlp_out.L0"), as_unit("attn_out.L3"), as_unit("resid_post.L2"), as_unit("mlp_out.L1"),
             as_unit(("mlp_neurons.L3", [1, 9])), as_unit("attn_out.L1"), as_unit("resid_post.L3")]
    reqs = [(u, rng.integers(0, len(SHORT), size=3), rng.normal(scale=2.0, size=(3, p.dim(u)))) for u in units]
    results, layers_run = evaluate_counting_rows(lm, p, reqs)
    # the patched pass (the last 4 calls, after the prefix passes): layer j ran the rows patched at layers <= j
    assert layers_run[-4:] == [(j, sum(3 for u in units if u.site.layer <= j)) for j in range(4)]
    for (unit, pidx, vals), res in zip(reqs, results):
        naive = [naive_mass(lm, SHORT[i], unit, v, ids) for i, v in zip(pidx, vals)]
        np.testing.assert_allclose(res.scores, naive, atol=1e-5, rtol=0)
    full = Patcher(lm, SHORT, outcome=NextTokenMass(ids), batch_size=64, resume=False).evaluate(reqs)
    for a, b in zip(results, full):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6, rtol=0)


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_resumed_generation_and_gradients_equal_the_full_pass(arch):
    """Sampling continues from the resumed cache (rows that start late get their unpatched last-token keys
    below their layer); gradients flow through the resumed rows."""
    lm = tiny_model(arch, seed=8, n_layers=3)
    rng = np.random.default_rng(5)
    reqs = [(u, [0, 1, 2, 3], rng.normal(scale=3.0, size=(4, 64))) for u in ("mlp_out.L2", "mlp_out.L0", "attn_out.L1")]
    got = {}
    for resume in (True, False):
        gen = Patcher(lm, SHORT, outcome=Generate(WordScorer(), n_samples=4, max_new_tokens=3, seed=2),
                      batch_size=48, resume=resume)
        mass = Patcher(lm, SHORT, outcome=NextTokenMass(_ids(lm)), resume=resume)
        got[resume] = ([r.scores for r in gen.evaluate(reqs)], mass.evaluate(reqs, grad=True))
    for a, b in zip(got[True][0], got[False][0]):
        np.testing.assert_array_equal(a, b)  # the same sampled tokens
    for a, b in zip(got[True][1], got[False][1]):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        np.testing.assert_allclose(a.grad, b.grad, atol=1e-5, rtol=1e-4)
        assert np.abs(a.grad).max() > 0


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_resumed_continuations_equal_the_full_pass_on_every_architecture(arch):
    """Teacher-forced continuations (several new tokens) enter at their layer from unpatched base rows run in
    the same pass, one per prompt and continuation."""
    lm = tiny_model(arch, seed=9, n_layers=4)
    units = [as_unit(u) for u in ("mlp_out.L3", "attn_out.L2", "resid_post.L3", "mlp_out.L1", "mlp_out.L2")]
    got, outs = {}, {}
    for resume in (True, False):
        rng = np.random.default_rng(6)
        outs[resume] = Reweight(WordScorer(), n_samples=3, max_new_tokens=3, seed=5)
        p = Patcher(lm, SHORT, outcome=outs[resume], batch_size=75, resume=resume)  # one pass: 25 rows x 3
        reqs = [(u, np.arange(len(SHORT)), rng.normal(scale=2.0, size=(len(SHORT), p.dim(u)))) for u in units]
        got[resume] = evaluate_counting_rows(lm, p, reqs)
    for a, b in zip(got[True][0], got[False][0]):
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6, rtol=0)
        np.testing.assert_allclose(a.extras["ess"], b.extras["ess"], rtol=1e-5)
        assert np.ptp(a.scores) > 0
    # the base rows: one per prompt and distinct continuation input; then the rows patched at layers <= j
    n_base = sum(len({tuple(c[:-1]) for c in conts}) for conts in outs[True].tokens)
    assert [rows for _, rows in got[True][1][-4:]] == [n_base, n_base + 15, n_base + 45, n_base + 75]
    assert [rows for _, rows in got[False][1][-4:]] == [75] * 4


def test_base_rows_are_used_only_where_they_save_layers():
    pidx = np.array([0, 0, 1, 1, 1])
    tokens = np.array([[5, 6], [5, 6], [7, 8], [7, 9], [7, 8]])
    first, source = base_rows(pidx, tokens, np.array([3, 3, 3, 3, 3]), 4)  # 3 base rows x 4 layers < 15 saved
    np.testing.assert_array_equal(pidx[first], [0, 1, 1])
    np.testing.assert_array_equal(tokens[first], [[5, 6], [7, 8], [7, 9]])
    np.testing.assert_array_equal(source, [0, 0, 1, 2, 1])
    assert base_rows(pidx, tokens, np.array([1, 1, 2, 3, 3]), 4) is None  # 12 layers for base rows, 10 saved
