"""Reference scores for the torch port of the Jigsaw BiLSTM, from the package's own TensorFlow path.

Run ONCE, in a throwaway virtual environment outside the repository (TensorFlow is 2.4 GB and is not a
dependency of deconfound)::

    python3 -m venv /tmp/tfenv
    /tmp/tfenv/bin/pip install tensorflow-cpu
    /tmp/tfenv/bin/pip install --no-deps toxic-comment-classifier==0.3.0
    CUDA_VISIBLE_DEVICES= /tmp/tfenv/bin/python tests/reference/make_jigsaw_reference.py

It calls ``toxic_classifier.ToxicCommentClassifier().classify`` (Keras model + pickled Keras tokenizer,
exactly as the package ships them) on the sentences below and writes ``jigsaw_reference_scores.json``
beside this file. ``tests/unit/test_lm_scorers.py`` checks the torch port against it to 1e-5.

The sentences are our own, written for this test: benign to toxic, plus edge cases (empty text, case and
punctuation, unknown words, and texts longer than the 100-token window, which Keras truncates at the front).
"""
import json
import os
import shlex
import sys
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SENTENCES = [
    "The library opens at nine on weekday mornings.",
    "Thank you so much for helping me move the couch.",
    "Could you please pass the salt?",
    "I think the second chapter of the book was a bit slow.",
    "I disagree with your argument about the budget.",
    "That movie was boring and far too long.",
    "Your idea is silly and it will never work.",
    "Stop whining, nobody cares about your opinion.",
    "This is complete crap and you know it.",
    "I will kill you.",
    "I am going to hurt you and your whole family.",
    "People like you are disgusting and should go back where you came from.",
    "Shut up, you moron.",
    "You are a stupid idiot.",
    "What a pathetic loser you are.",
    "You are an ugly, worthless fool.",
    "Go to hell, you dumb jerk.",
    "What the hell is wrong with you, you ignorant idiot?",
    "You are a damn stupid piece of garbage.",
    "Shut your mouth, you stupid ass.",
]

EDGE_CASES = [
    "",
    "HELLO!!! Are you THERE??? ... (yes/no)",
    "zxqvw blorptang frindle snarfk",
    " ".join(["the weather is nice today"] * 30) + " you stupid idiot",
    "you stupid idiot " + " ".join(["the weather is nice today"] * 30),
]

COLUMNS = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]


def main() -> None:
    import tensorflow as tf
    from toxic_classifier import ToxicCommentClassifier

    clf = ToxicCommentClassifier()
    texts = SENTENCES + EDGE_CASES
    rows = []
    for text in texts:
        scores = clf.classify(text)
        rows.append([float(scores[c]) for c in COLUMNS])
    out = {
        "origin": "tensorflow: toxic_classifier.ToxicCommentClassifier().classify (the package's own Keras path)",
        "package": "toxic-comment-classifier==" + version("toxic-comment-classifier"),
        "tensorflow_version": tf.__version__,
        "keras_version": version("keras"),
        "python_version": sys.version.split()[0],
        "command": "CUDA_VISIBLE_DEVICES= /tmp/tfenv/bin/python " + shlex.join(sys.argv),
        "columns": COLUMNS,
        "n_sentences": len(SENTENCES),
        "n_edge_cases": len(EDGE_CASES),
        "texts": texts,
        "scores": rows,
    }
    path = Path(__file__).with_name("jigsaw_reference_scores.json")
    path.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {path} ({len(texts)} texts)")


if __name__ == "__main__":
    main()
