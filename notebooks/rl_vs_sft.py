# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What RL buys over imitation: `experiments/rl_vs_sft.yaml`
#
# Reads the run records of the study (config.yaml, metrics.jsonl, summary.json and heldout/, the outcome of
# every held-out episode) and sets each run's SFT-only start against its SFT+GRPO policy on the same pages:
# success against demonstrations and CPU minutes, the paired differences with their 95% intervals, the
# tasks each difference comes from, and whether the gain carries to tasks no training saw.
#
# Set `BROWSERRL_RUNS` to one or more folders (a `-m` sweep, or folders of run folders), separated by
# `:`; without it the published records of the study's default arm are read, at 2 SFT epochs
# (`docs/runs/rl_vs_sft-16steps`, seeds 0-2) and at 8 (`docs/runs/sft8-16steps`, seeds 0, 1). Runs of
# different settings (SFT demonstrations and epochs, expert, task sampling) are never pooled.

# %%
import os
from pathlib import Path

from IPython.display import Markdown, display

from browserrl import analysis, comparison

ROOT = Path(comparison.__file__).resolve().parents[1]
DEFAULT = [ROOT / "docs" / "runs" / "rl_vs_sft-16steps", ROOT / "docs" / "runs" / "sft8-16steps"]
FOLDERS = [Path(p) for p in os.environ.get("BROWSERRL_RUNS", "").split(os.pathsep) if p] or DEFAULT
runs = [run for folder in FOLDERS for run in analysis.load_local(folder)]
found = comparison.points(runs)
print(f"{len(runs)} runs, {len(found)} policies from {', '.join(str(f) for f in FOLDERS)}")

# %% [markdown]
# ## Every policy
#
# Each run gives two: its start (SFT only, or the base model) and its GRPO policy. Demonstrations count the
# SFT episodes and every expert episode GRPO put into a group; CPU minutes are SFT's and GRPO's, evaluation
# left out.

# %%
display(Markdown(analysis.markdown_table(comparison.point_rows(found))))

# %% [markdown]
# ## SFT+GRPO minus SFT only
#
# Paired by (training seed, task, held-out seed). The interval is a percentile bootstrap over held-out seeds
# within each (training seed, task): the evaluation's noise for these training runs, not the spread over
# training seeds.

# %%
display(Markdown(analysis.markdown_table(comparison.difference_rows(runs))))

# %% [markdown]
# ## Success against what it cost
#
# One line per arm through the mean over seeds, the seeds' min-max as a band.

# %%
fig = comparison.plot_success_vs_cost(found)

# %% [markdown]
# ## Where the difference comes from
#
# Held-out seeds solved per task, SFT only -> SFT+GRPO, sampled.

# %%
display(Markdown(analysis.markdown_table(comparison.task_rows(runs))))

# %% [markdown]
# ## Does RL generalize?
#
# Success on the 8 heldout tasks (never trained on) against success on the suite, an arrow from each run's
# start to its GRPO policy: where the arrow rises, what GRPO taught carried to tasks it never saw.

# %%
fig = comparison.plot_generalization(found)
