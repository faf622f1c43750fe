"""An independent oracle for the default patching outcome on a real model."""
from contextlib import nullcontext

import pytest


@pytest.fixture(scope="session")
def naive_word_mass():
    """``mass(lm, text, patched=None)``: the probability that the continuation of ``text`` starts with a
    lexicon word, by full forward passes of text + the word's pieces (right-padded, no cache), summed over
    the minimal word sequences. ``patched(pos)`` returns a context manager that patches position ``pos``."""

    def mass(lm, text, patched=None, chunk=48):
        import numpy as np
        import torch

        from deconfound.lm.lexicon import minimal_sequences, word_sequences

        seqs = minimal_sequences(word_sequences(lm.tokenizer).values())
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
