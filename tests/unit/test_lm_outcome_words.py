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
