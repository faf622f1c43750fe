"""An independent oracle for the default patching outcome on a real model."""
from contextlib import nullcontext

import pytest


@pytest.fixture(scope="session")
def naive_word_mass():
    """``mass(lm, text, patched=None)``: the probability that the continuation of ``text`` starts with a
    lexicon word, by full forward passes of text + the word's pieces (right-padded, no cache), summed over
    the minimal word sequences: with ``default_selection`` only the multi-token words whose first pieces the
    default ``NextTokenMass`` runs (its selection rule; the probabilities are recomputed here), with
    ``multi_token=False`` the one-token words only. ``patched(pos)`` returns a context manager that patches
    position ``pos``."""

    def mass(lm, text, patched=None, chunk=48, multi_token=True, default_selection=True):
        import numpy as np
        import torch

        from deconfound.lm.lexicon import minimal_sequences, word_sequences

        seqs = minimal_sequences(word_sequences(lm.tokenizer).values())
        if not multi_token:
            seqs = [s for s in seqs if len(s) == 1]
        elif default_selection:  # the default NextTokenMass runs only the words of its chosen first pieces
            from deconfound.lm.outcomes import NextTokenMass
            from deconfound.lm.patch import Patcher

            rule = NextTokenMass()
            rule.prepare(Patcher(lm, [text], outcome=rule))
            ids = lm.tokenizer(text, return_tensors="pt")
            with torch.inference_mode(), (patched(len(ids["input_ids"][0]) - 1) if patched else nullcontext()):
                p0 = lm.model(**ids).logits[0, -1].double().softmax(-1).numpy()[None]
            pieces, chosen = rule._select(p0)
            keep = set(pieces[chosen[0]].tolist())
            seqs = [s for s in seqs if len(s) == 1 or s[0] in keep]
        ids = lm.tokenizer(text)["input_ids"]
        at = len(ids) - 1
        total = 0.0
        for start in range(0, len(seqs), chunk):
            part = seqs[start:start + chunk]
            width = len(ids) + max(len(s) for s in part) - 1
            x = torch.full((len(part), width), lm.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(x)
            for r, s in enumerate(part):
                row = ids + list(s[:-1])
                x[r, :len(row)] = torch.as_tensor(row)
                mask[r, :len(row)] = 1
            with torch.inference_mode(), (patched(at) if patched else nullcontext()):
                lp = lm.model(input_ids=x, attention_mask=mask, use_cache=False).logits.double().log_softmax(-1)
            for r, s in enumerate(part):
                total += float(np.exp(sum(lp[r, at + k, t].item() for k, t in enumerate(s))))
        return total

    return mass
