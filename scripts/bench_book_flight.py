"""What a book-flight episode costs: the scripted oracle plays held-out seeds through the env server, and the
episodes are tokenized exactly as a GRPO rollout would be (browserrl.sft.collect_demonstrations).

    python scripts/bench_book_flight.py task=book-flight                             # 32 held-out seeds
    python scripts/bench_book_flight.py task=book-flight task.prompt.compact=false   # without compaction

Prints one JSON line: the oracle's success rate and steps, the tokens of a whole episode (what
trainer.max_completion_length must hold), of the first prompt and of the largest observation turn, and the
wall time. Any train.py override works (model=..., task.observation_delay=..., env=remote ...).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import statistics
import time

import hydra
from omegaconf import DictConfig

from browserrl.env.pool import EnvPool
from browserrl.modeling import load_tokenizer, resolve_model_path
from browserrl.rollout import ChatFormat
from browserrl.sft import Demonstration, collect_demonstrations
from browserrl.train import env_server


def observation_turns(demo: Demonstration) -> list[int]:
    """Token counts of the env turns: the runs of masked tokens after the first prompt."""
    runs = [(masked, len(list(group))) for masked, group in itertools.groupby(demo.completion_mask)]
    return [n for masked, n in runs[1:] if masked == 0]


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.task.name != "book-flight":
        raise SystemExit(f"this benchmark plays book-flight: add task=book-flight (got {cfg.task.name})")
    seeds = range(cfg.eval.first_seed, cfg.eval.first_seed + cfg.eval.num_seeds)
    chat = ChatFormat(load_tokenizer(resolve_model_path(cfg.model)), cfg.model.eot_token)
    with env_server(cfg) as (url, _):
        options = {"observation_delay": cfg.task.observation_delay}
        pool = EnvPool(url, cfg.env.sessions, cfg.env.message_timeout_s, reset_options=options)
        try:
            start = time.perf_counter()
            demos = collect_demonstrations(pool, chat, cfg.task, [("book-flight", s) for s in seeds])
            seconds = time.perf_counter() - start
        finally:
            pool.close()
    if not demos:
        raise SystemExit("the oracle solved no episode: is the page or the prompt different?")
    steps = [len(d.actions) for d in demos]
    lengths = [len(d.input_ids) for d in demos]
    first_prompt = [d.completion_mask.index(1) for d in demos]
    turns = [n for d in demos for n in observation_turns(d)]
    print(
        json.dumps(
            {
                "episodes": len(seeds),
                "solved": len(demos) / len(seeds),
                "unsolved_seeds": sorted(set(seeds) - {d.seed for d in demos}),
                "steps_mean": statistics.mean(steps),
                "steps_max": max(steps),
                "episode_tokens_mean": round(statistics.mean(lengths)),
                "episode_tokens_max": max(lengths),
                "first_prompt_tokens_max": max(first_prompt),
                "observation_tokens_max": max(turns),
                "env_steps": sum(steps),
                "wall_s": round(seconds, 1),
                "compact": cfg.task.prompt.compact,
                "observation_delay": cfg.task.observation_delay,
                "tokenizer": cfg.model.name,
                "sessions": cfg.env.sessions,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            }
        )
    )


if __name__ == "__main__":
    main()
