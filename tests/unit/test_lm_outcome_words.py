"""The next-token outcome counts multi-token words with their sequence probability.

Oracle: full forward passes of prompt + word pieces, one row at a time, with the patch hook of
``deconfound.lm.hooks`` (no prefix cache, no batching), multiplied out by hand.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from deconfound.errors import DataError  # noqa: E402
from deconfound.lm.hooks import patch  # noqa: E402
from deconfound.lm.models import tiny_model  # noqa: E402
from deconfound.lm.outcomes import NextTokenMass  # noqa: E402
from deconfound.lm.patch import Patcher  # noqa: E402

pytestmark = pytest.mark.lm

PROMPTS = ["the game was great and the team played", "you are a", "the doctor said",
           "shut up you dumb fool nobody likes", "he walks the dog"]
# word-level tokenizer: a "word" with spaces is several tokens; "hate you" starts with "hate" and counts once
WORDS = ["hate", "hate you", "stupid idiot", "dumb fool nobody", "ugly useless and pathetic"]

# words that share pieces ("dumb fool ...", "ugly useless ...", "stupid ..."): the prefixes they share run once
LEXICON = ["hate", "stupid idiot", "stupid fool", "dumb fool nobody", "dumb fool nobody likes", "dumb idiot",
           "ugly useless and pathetic", "ugly useless person", "you are a", "you are", "shut up you"]
# scores of the row-per-pass implementation (commit d050a22) on LEXICON, batch_size 4: base and patched (values of
# _patch_values) for max_rows None and 3
REFERENCE = {
    ("llama", None): {"base": [0.0086169243, 0.0045328042, 0.0073253224, 0.0018184459, 0.0061733304],
                  "patched": [0.0066042528, 0.0031688749, 0.0092551354, 0.0018386299, 0.0124389539]},
    ("llama", 3): {"base": [0.0086130463, 0.0044996208, 0.0073148366, 0.0017836329, 0.0061019515],
                  "patched": [0.0065681511, 0.0031097739, 0.0092473291, 0.0018368998, 0.0124387667]},
    ("gpt2", None): {"base": [0.004509008, 0.0045265593, 0.0046774046, 0.0037314617, 0.0077136625],
                 "patched": [0.0110004619, 0.004813754, 0.0138339959, 0.0064292722, 0.0114209075]},
    ("gpt2", 3): {"base": [0.0045062127, 0.0045192856, 0.0046633491, 0.0036995062, 0.0077116392],
                 "patched": [0.0109470384, 0.0048001553, 0.0138206854, 0.0064159581, 0.0114046065]},
    ("gemma2", None): {"base": [0.0061529134, 0.0043276348, 0.0048932205, 0.0020254466, 0.0048827878],
                   "patched": [0.0054944507, 0.0014576245, 0.0071595083, 0.0019596478, 0.0191880744]},
    ("gemma2", 3): {"base": [0.0061304714, 0.0043211286, 0.0048815054, 0.0020237954, 0.0048313504],
                   "patched": [0.005474356, 0.0014373725, 0.007146325, 0.0019576466, 0.019177407]},
}


@pytest.fixture(scope="module", params=["llama", "gpt2", "gemma2"])  # gemma2: a window of 8 < some prompts
def lm(request):
    return tiny_model(request.param, seed=7, n_layers=3)


def _seq_prob(lm, prompt, pieces, values=None):
    ids = lm.tokenizer(prompt)["input_ids"]
    words = [lm.tokenizer.convert_tokens_to_ids(p) for p in pieces]
    x = torch.as_tensor([ids + words[:-1]])
    with torch.no_grad():
        if values is None:
            logits = lm.model(input_ids=x).logits[0]
        else:
            with patch(lm, "mlp_out.L1", torch.as_tensor(values, dtype=torch.float32)[None], positions=len(ids) - 1):
                logits = lm.model(input_ids=x).logits[0]
    lp = logits.double().log_softmax(-1)
    return float(np.exp(sum(lp[len(ids) - 1 + k, t].item() for k, t in enumerate(words))))


def _oracle(lm, prompt, values=None):
    return sum(_seq_prob(lm, prompt, w.split(), values) for w in WORDS if w != "hate you")


def test_multi_token_words_count_with_their_sequence_probability(lm):
    out = NextTokenMass(words=WORDS)
    p = Patcher(lm, PROMPTS, outcome=out, batch_size=4, cache_prompts=3)
    base = p.base_scores()
    assert out.describe()["n_multi_token_words"] == 3  # "hate you" is inside "hate"
    for i, prompt in enumerate(PROMPTS):
        assert base[i] == pytest.approx(_oracle(lm, prompt), abs=1e-6)
    vals = np.random.default_rng(1).normal(scale=2.0, size=(len(PROMPTS), p.dim("mlp_out.L1")))
    got = p.scores("mlp_out.L1", np.arange(len(PROMPTS)), vals)
    for i, prompt in enumerate(PROMPTS):
        assert got[i] == pytest.approx(_oracle(lm, prompt, vals[i]), abs=1e-6)
    assert not np.allclose(got, base, atol=1e-4)  # the patch moves the outcome, so the check has teeth
    # single-token words only: the multi-token words drop out
    single = Patcher(lm, PROMPTS, outcome=NextTokenMass(words=WORDS, multi_token=False)).base_scores()
    for i, prompt in enumerate(PROMPTS):
        assert single[i] == pytest.approx(_seq_prob(lm, prompt, ["hate"]), abs=1e-6)


def test_gradient_flows_through_the_multi_token_rows(lm):
    p = Patcher(lm, PROMPTS[:2], outcome=NextTokenMass(words=WORDS), batch_size=8)
    vals = np.random.default_rng(2).normal(size=(2, p.dim("mlp_out.L1")))
    res = p.evaluate([("mlp_out.L1", np.arange(2), vals)], grad=True)[0]
    eps = 1e-2
    for k in (0, 5):
        e = np.zeros_like(vals)
        e[:, k] = eps
        fd = (p.scores("mlp_out.L1", np.arange(2), vals + e) - p.scores("mlp_out.L1", np.arange(2), vals - e)) / (2 * eps)
        np.testing.assert_allclose(res.grad[:, k], fd, rtol=2e-2, atol=1e-7)


def test_bad_word_sets(lm):
    with pytest.raises(ValueError, match="token_ids or words"):
        NextTokenMass([1], words=["hate"])
    with pytest.raises(DataError, match="non-empty"):
        Patcher(lm, PROMPTS[:1], outcome=NextTokenMass(words=["hate you"], max_tokens=1)).base_scores()


def test_skipped_words_are_bounded_by_their_first_piece(lm):
    p = Patcher(lm, PROMPTS, outcome=NextTokenMass(words=WORDS, min_first_prob=0.5))  # skips every multi word
    res = p.evaluate([("mlp_out.L1", np.arange(len(PROMPTS)), p.activations("mlp_out.L1")["mlp_out.L1"])])[0]
    for i, prompt in enumerate(PROMPTS):
        single = _seq_prob(lm, prompt, ["hate"])
        firsts = sum(_seq_prob(lm, prompt, [w]) for w in ("stupid", "dumb", "ugly"))
        assert res.scores[i] == pytest.approx(single, abs=1e-6)
        assert res.extras["omitted_bound"][i] == pytest.approx(firsts, abs=1e-6)
        assert single <= _oracle(lm, prompt) <= single + firsts


def test_max_rows_runs_the_most_probable_first_pieces(lm):
    p = Patcher(lm, PROMPTS, outcome=NextTokenMass(words=WORDS, max_rows=1), batch_size=64)  # one batch
    alone = [Patcher(lm, [q], outcome=NextTokenMass(words=WORDS, max_rows=1)).base_scores()[0] for q in PROMPTS]
    got = p.base_scores()
    extras = p.evaluate([("mlp_out.L1", np.arange(len(PROMPTS)), p.activations("mlp_out.L1")["mlp_out.L1"])])[0]
    multi = {"stupid": ["stupid", "idiot"], "dumb": ["dumb", "fool", "nobody"],
             "ugly": ["ugly", "useless", "and", "pathetic"]}
    first = {w: [_seq_prob(lm, q, [w]) for q in PROMPTS] for w in multi}
    for i, prompt in enumerate(PROMPTS):
        top = max(first, key=lambda w: first[w][i])  # each prompt's own most probable first piece
        want = _seq_prob(lm, prompt, ["hate"]) + _seq_prob(lm, prompt, multi[top])
        assert got[i] == pytest.approx(want, abs=1e-6)
        assert alone[i] == pytest.approx(got[i], abs=1e-7)  # the same alone as in a batch (float32 rounding)
        bound = sum(first[w][i] for w in multi if w != top)
        assert extras.extras["omitted_bound"][i] == pytest.approx(bound, abs=1e-6)


def _patch_values(p):
    return np.random.default_rng(1).normal(scale=2.0, size=(len(PROMPTS), p.dim("mlp_out.L1")))


@pytest.mark.parametrize("max_rows", [None, 3])
def test_shared_prefixes_give_the_row_per_pass_scores(lm, max_rows):
    """One pass per distinct word prefix and prompt, several prompts per pass: the same scores as running each
    word row in full (the implementation before, REFERENCE) to 1e-6, and no score depends on its batch."""
    arch = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2", "Gemma2ForCausalLM": "gemma2"}[
        type(lm.model).__name__]
    want = REFERENCE[(arch, max_rows)]
    runs = {}
    for bs, order in ((4, slice(None)), (1, slice(None)), (64, slice(None, None, -1))):
        p = Patcher(lm, PROMPTS[order], outcome=NextTokenMass(words=LEXICON, max_rows=max_rows), batch_size=bs)
        vals = _patch_values(p)[order]
        got = {"base": p.base_scores()[order], "patched": p.scores("mlp_out.L1", np.arange(len(PROMPTS)), vals)[order]}
        for key in ("base", "patched"):
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=f"{key}, batch_size {bs}")
        runs[bs] = p.n_forward
    assert runs[64] < runs[1]  # prompts share forward passes
    if max_rows is None:  # the reference has teeth: the max_rows selection moves scores by more than the tolerance
        assert np.abs(np.subtract(want["base"], REFERENCE[(arch, 3)]["base"])).max() > 2e-6
