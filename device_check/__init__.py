"""The GPU recipe's cost and correctness, measured without an env, a browser or model weights.

A GPU check machine is offline: no Chromium, no MiniWoB, no LFM2-350M weights. So this check trains on
recorded episodes (tests/fixtures/recorded_episodes.json: the scripted oracle's click-button and book-flight
episodes through the real env and RolloutEngine, as token ids with env_mask, device_check/record_episodes.py)
and builds LFM2-350M from its real config with random weights. Every setting is the recipe's, composed by
Hydra from conf/ (`python train.py infra=gpu model=... tuning=...`, `+experiment=book_flight`). It measures:

- GRPO steps through TRL's GRPOTrainer with this repo's rollout_func contract (prompt_ids, completion_ids,
  logprobs, env_mask + extra fields; the rollout_func replays recorded episodes): seconds per step, tokens
  per second of forward/backward, peak GPU memory, for LoRA and full tuning at the recipe's batch sizes, and
  whether a full fine-tune's optimizer stepped fp32 weights that moved;
- HFGenerator's throughput (new tokens per second) at batch 8, 32 and 64;
- the sampler-vs-trainer logprob agreement of the rollout contract (tests/test_rollout.py's property) in the
  precision the recipe trains in;
- `pytest -m gpu`, reporting which GPU tests ran and why the others could not.

    python -m device_check OUT            # the full check (scripts/device_check.sh on a GPU machine)
    python -m device_check OUT --reduced  # tiny model, 2 steps: tests/test_device_check.py

The folder holds the driver (plan, models, episodes, steps, agreement, report) and the recorders of its
fixtures (record_episodes.py: the episodes it trains on; record_vllm_fixture.py: tests/test_generation.py's
vLLM outputs). It writes OUT/device_check.json and OUT/device_check.md. It imports torch, transformers,
peft, trl, datasets, Hydra and browserrl's generation, modeling and analysis modules, nothing that needs
openenv, browsergym or Chromium, so the wheels carried to the GPU machine stay small (docs/gpu.md, "The
device check").
"""

import os

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL: we know
