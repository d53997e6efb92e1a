"""What idle env sessions cost training: forward/backward time with sessions open vs released.

    python benchmarks/bench_idle_sessions.py                               # 8 sessions, 3 rounds
    python benchmarks/bench_idle_sessions.py --rounds 5 env.sessions=16

Each round opens the run's env sessions on suite tasks (left idle on their pages, as they are while a run
trains), times `--steps` forward/backward passes of the configured model (LoRA, the run's precision) on a
`--tokens`-long sequence, then releases the sessions (`EnvPool.release`, what the SFT warm-up does) and
times the same passes again. Alternating the two cancels the machine's drift. Arguments after the options
are train.py overrides (default: +experiment=cpu_suite).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from peft import get_peft_model

from browserrl.build import env_pool
from browserrl.compose import compose
from browserrl.config import bf16_autocast, preflight, validate
from browserrl.modeling import load_policy, lora_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=4, help="forward/backward passes per measurement")
    p.add_argument("--tokens", type=int, default=600, help="sequence length (a recipe episode: ~500-1000)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait after opening or releasing")
    p.add_argument("overrides", nargs="*", help="train.py overrides (default: +experiment=cpu_suite)")
    args = p.parse_args()
    cfg = compose(*(args.overrides or ["+experiment=cpu_suite"]))
    validate(cfg)
    preflight(cfg)
    model, _ = load_policy(cfg.model)
    if (lora := lora_config(cfg)) is not None:
        model = get_peft_model(model, lora)
    ids = torch.randint(0, model.config.vocab_size, (1, args.tokens))

    def seconds_per_step() -> float:
        start = time.perf_counter()
        for _ in range(args.steps):
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16_autocast(cfg)):
                loss = model(input_ids=ids, labels=ids).loss
            loss.backward()
        return (time.perf_counter() - start) / args.steps

    seconds_per_step()  # warm-up
    tasks, n = list(cfg.suite.tasks), cfg.env.sessions
    times: dict[str, list[float]] = {"open": [], "released": []}
    with env_pool(cfg) as pool:
        for _ in range(args.rounds):
            pool.reset(list(range(n)), [tasks[i % len(tasks)] for i in range(n)], list(range(n)))
            time.sleep(args.settle)  # past the launches
            times["open"].append(round(seconds_per_step(), 2))
            pool.release()
            time.sleep(args.settle)
            times["released"].append(round(seconds_per_step(), 2))
            print(json.dumps(times), flush=True)
    open_s, released_s = statistics.median(times["open"]), statistics.median(times["released"])
    report = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, bf16={bf16_autocast(cfg)}",
        "sessions": n,
        "tokens": args.tokens,
        "seconds_per_step": times,
        "slowdown_open": round(open_s / released_s - 1, 3),
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
