"""The worked example of docs/robustness.md. Run: MPLBACKEND=Agg .venv/bin/python docs/robustness_example.py"""
import warnings

import numpy as np
import pandas as pd

from deconfound import refute, simulate
from deconfound.estimators import get_estimator
from deconfound.sensitivity import sensitivity_analysis, sensitivity_benchmark, sensitivity_plot

warnings.simplefilter("ignore")
pd.set_option("display.width", 120)

# 8 true topics; the labeller only sees a coarse label: which half of the topics (ranked by how strongly they
# push prompts towards toxicity) a prompt belongs to. The rest of the topic is hidden but still confounds.
data, truth = simulate.topic_mediation(4000, n_topics=8, seed=1)
rank = np.argsort(np.argsort(truth.params["a"]))
coarse = data.replace(x=pd.DataFrame({"topic": pd.Categorical([f"half{h}" for h in rank[truth.topic] // 4])}))

est = get_estimator("dml", n_folds=3, random_state=0)
result = est.fit(coarse)
print(result.summary())
print("truth: NIE(average) =", round(truth.value("u0", "nie", "average"), 4),
      " TE =", round(truth.value("u0", "te", "average"), 4))
full = est.fit(data.replace(x=pd.DataFrame({"topic": pd.Categorical(truth.topic)})))
print("with the full topic: NIE(average) =", round(full.effect("u0", "nie", "average").estimate, 4),
      " TE =", round(full.effect("u0", "te", "average").estimate, 4))

print()
print(sensitivity_analysis(result).summary())
print()
bench = sensitivity_benchmark(est, coarse, drop=["topic"])
print(bench.summary())
sensitivity_plot(result, "docs/robustness_contour.png", effect="nie", arm="average", benchmark=bench)

print()
table = refute.refute_all(est, coarse, random_state=0, options={"topic_granularity": {"mode": "soft"}})
print(table[table.arm == "average"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
latent = refute.unobserved_confounder(est, coarse, random_state=0, original=result)
print(latent.details[latent.details.arm == "average"].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
