"""What a book-flight episode costs: the scripted oracle plays held-out seeds through the env server, through
the same rollout engine as GRPO (browserrl.build.demonstrator), so the episodes are tokenized as a rollout's.

    python benchmarks/bench_book_flight.py task=book-flight                             # 32 held-out seeds
    python benchmarks/bench_book_flight.py task=book-flight task.prompt.compact=false   # without compaction

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

from browserrl import build
from browserrl.modeling import load_tokenizer, resolve_model_path
from browserrl.rollout import ChatFormat, Episode
from browserrl.sft import collect_demonstrations


def observation_turns(episode: Episode) -> list[int]:
    """Token counts of the env turns: the runs of masked tokens in the completion."""
    runs = [(from_model, len(list(group))) for from_model, group in itertools.groupby(episode.env_mask)]
    return [n for from_model, n in runs if not from_model]


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> None:
    if cfg.task.name != "book-flight":
        raise SystemExit(f"this benchmark plays book-flight: add task=book-flight (got {cfg.task.name})")
    seeds = range(cfg.eval.first_seed, cfg.eval.first_seed + cfg.eval.num_seeds)
    chat = ChatFormat(load_tokenizer(resolve_model_path(cfg.model)), cfg.model.eot_token)
    with build.env_pool(cfg) as pool:
        engine = build.demonstrator(pool, chat, cfg, bounded=False)  # measure whole episodes
        start = time.perf_counter()
        demos = collect_demonstrations(engine, [("book-flight", s) for s in seeds])
        seconds = time.perf_counter() - start
    if not demos:
        raise SystemExit("the oracle solved no episode: is the page or the prompt different?")
    steps = [d.steps for d in demos]
    lengths = [len(d.prompt_ids) + len(d.completion_ids) for d in demos]
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
                "first_prompt_tokens_max": max(len(d.prompt_ids) for d in demos),
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
