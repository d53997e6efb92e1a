# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Full fine-tune vs LoRA (r = 8, 16, 32) on MiniWoB++
#
# Reads the runs of one `full_vs_lora` sweep (`make sweep`: `python train.py -m +experiment=full_vs_lora`)
# from their local records (config.yaml, metrics.jsonl, summary.json in each run folder) or from W&B, and
# compares the tuning modes: learning curves over seeds, held-out success@N after training, and what each
# mode costs (wall time, peak memory, trainable parameters).
#
# Set `BROWSERRL_SWEEP` to a sweep folder (`multirun/DATE/TIME`) or to `wandb:ENTITY/PROJECT/GROUP`;
# without it the newest sweep under `multirun/` is read. Every number below comes from those records.
# The plots and the summary table are also written into the sweep folder (`plots/GROUP` for W&B).

# %%
import os
from pathlib import Path

from IPython.display import Markdown, display

from browserrl import analysis

ROOT = Path(analysis.__file__).resolve().parents[1]
SOURCE = os.environ.get("BROWSERRL_SWEEP") or str(analysis.latest_sweep(ROOT / "multirun"))
OUT = ROOT / "plots" / SOURCE.rpartition("/")[2] if SOURCE.startswith("wandb:") else Path(SOURCE)
runs = analysis.load_runs(SOURCE)
groups = analysis.by_group(runs)
print(f"{len(runs)} runs from {SOURCE}")
for label, members in groups.items():
    print(f"  {label}: seeds {[r.seed for r in members]}")

# %% [markdown]
# ## One row per run
#
# success@N is held-out (seeds training never saw), measured after training; "steps to 0.9" is the first
# training step whose sampled success rate reached 0.9 ("-": never, within the budget).

# %%
display(Markdown(analysis.markdown_table(analysis.summary_rows(runs))))

# %% [markdown]
# ## Learning curves
#
# Training rollouts: reward and success@N against step, the mean over seeds with a min-max band, per tuning
# mode and rank.

# %%
fig = analysis.plot_curves(runs)

# %% [markdown]
# Held-out success during training, when the runs evaluated every `eval.every_steps` steps.

# %%
if any(analysis.band([r], "eval/success_rate") for r in runs):
    fig = analysis.plot_curves(runs, ("success_rate", *analysis.SUCCESS_KEYS), prefix="eval/")
else:
    print("no periodic held-out eval in these runs (eval.every_steps=0)")

# %% [markdown]
# ## After training
#
# Held-out success@N per mode (bars: mean over seeds, whiskers: min-max); "base" is the untrained model
# evaluated the same way at the start of each run.

# %%
fig = analysis.plot_final_success(runs)

# %% [markdown]
# ## Per task (suite runs)
#
# A run on a suite of tasks (`suite=cpu`) logs each task's training success at the steps that drew it, and
# its held-out success per task before and after training.

# %%
if any(len(r.tasks) > 1 for r in runs):
    fig = analysis.plot_task_curves(runs)
    fig = analysis.plot_task_success(runs)
    display(Markdown(analysis.markdown_table(analysis.task_rows(runs))))
else:
    print("single-task runs: no per-task breakdown")

# %% [markdown]
# ## Cost
#
# Wall time per run, peak memory of the training process (RSS; GPU memory on CUDA) and trainable parameters.

# %%
fig = analysis.plot_resources(runs)

# %% [markdown]
# ## Files
#
# The same figures as PNGs and the table as markdown, next to the runs.

# %%
OUT.mkdir(parents=True, exist_ok=True)
for name, path in analysis.write_report(runs, OUT).items():
    print(f"{name}: {path}")
