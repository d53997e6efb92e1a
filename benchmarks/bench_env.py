#!/usr/bin/env python
"""Benchmark the env server over WebSocket, and check that the pre-observation delay does not change rewards.

    python benchmarks/bench_env.py single --episodes 40            # one session: median reset / step
    python benchmarks/bench_env.py concurrent --sessions 4 --seconds 30   # episodes/s, N sessions at once
    python benchmarks/bench_env.py delay-check --seeds 10 --delays 0 0.5 # scripted episodes, reward per delay

An episode is click-test: reset + one click on the bid read from the AX tree. Without ``--url`` a local
server is started (and stopped) for the run. Results print as JSON lines (and go to ``--out`` if given).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from browserrl import oracle  # noqa: E402
from browserrl.env import BrowserGymAction, BrowserGymEnv, BrowserGymObservation, LocalEnvServer  # noqa: E402
from browserrl.prompts import parse_axtree  # noqa: E402


def _click_button_wrong(obs: BrowserGymObservation) -> str:
    """A button other than the one the oracle clicks: fails click-button on purpose."""
    right = oracle.act(obs)
    others = [f"click({n.bid!r})" for n in parse_axtree(obs.axtree_txt) if n.role == "button" and n.bid]
    return next((a for a in others if a != right), right)


def _click_collapsible(obs: BrowserGymObservation) -> str:
    """Expand the section, then Submit. No oracle can do it: the AX tree does not show the section's
    state (expanded=False before and after), so this script counts steps instead."""
    role = "tab" if obs.metadata.get("step", 0) == 0 else "button"
    return next(f"click({n.bid!r})" for n in parse_axtree(obs.axtree_txt) if n.role == role and n.bid)


# Scripted policies: observation -> next action; they solve the task (browserrl.oracle) or fail on purpose.
SOLVED = ("click-test", "click-button", "enter-text", "focus-text", "click-dialog")
SCRIPTS: dict[str, tuple[str, Callable[[BrowserGymObservation], str | None]]] = {
    **{task: (task, oracle.act) for task in SOLVED},
    "click-button-wrong": ("click-button", _click_button_wrong),
    "click-collapsible": ("click-collapsible", _click_collapsible),
}


async def play(env: BrowserGymEnv, script: str, seed: int, max_steps: int = 4) -> dict[str, Any]:
    """One scripted episode; returns reward, raw reward, steps and the reset/step latencies."""
    task, policy = SCRIPTS[script]
    t0 = time.perf_counter()
    result = await env.reset(seed=seed, task_name=task)
    reset_s, step_s = time.perf_counter() - t0, []
    while not result.done and len(step_s) < max_steps:
        t0 = time.perf_counter()
        result = await env.step(BrowserGymAction(action_str=policy(result.observation) or "noop()"))
        step_s.append(time.perf_counter() - t0)
    meta = result.observation.metadata
    return {
        "reward": result.reward,
        "raw_reward": meta.get("raw_reward"),
        "steps": meta.get("step"),
        "done": result.done,
        "reset_s": reset_s,
        "step_s": step_s,
    }


async def bench_single(url: str, episodes: int) -> dict[str, Any]:
    async with BrowserGymEnv(base_url=url) as env:
        await play(env, "click-test", seed=0)  # warm-up: the session's browser starts here
        runs = [await play(env, "click-test", seed=i) for i in range(1, episodes + 1)]
    steps = [s for r in runs for s in r["step_s"]]
    return {
        "bench": "single",
        "episodes": episodes,
        "success": sum(r["reward"] or 0 for r in runs) / episodes,
        "reset_median_s": round(statistics.median(r["reset_s"] for r in runs), 4),
        "step_median_s": round(statistics.median(steps), 4),
        "reset_p90_s": round(sorted(r["reset_s"] for r in runs)[int(0.9 * episodes)], 4),
        "step_p90_s": round(sorted(steps)[int(0.9 * len(steps))], 4),
    }


async def bench_concurrent(url: str, sessions: int, seconds: float) -> dict[str, Any]:
    warm, go = asyncio.Semaphore(0), asyncio.Event()
    stop_at, counts, successes = [float("inf")], [0] * sessions, [0] * sessions

    async def worker(k: int) -> None:
        async with BrowserGymEnv(base_url=url) as env:
            await play(env, "click-test", seed=k)  # warm-up: the session's browser starts here
            warm.release()
            await go.wait()
            seed = 1000 * k
            while time.perf_counter() < stop_at[0]:
                run = await play(env, "click-test", seed=seed)
                counts[k] += 1
                successes[k] += int((run["reward"] or 0) > 0)
                seed += 1

    tasks = [asyncio.create_task(worker(k)) for k in range(sessions)]
    for _ in range(sessions):
        await warm.acquire()
    start = time.perf_counter()
    stop_at[0] = start + seconds
    go.set()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    total = sum(counts)
    return {
        "bench": "concurrent",
        "sessions": sessions,
        "seconds": round(elapsed, 1),
        "episodes": total,
        "episodes_per_s": round(total / elapsed, 2),
        "success": round(sum(successes) / max(total, 1), 3),
    }


async def delay_check(
    url_for_delay: Callable[[float], str], delays: list[float], seeds: int
) -> dict[str, Any]:
    table: dict[str, dict[str, list[Any]]] = {}
    for delay in delays:
        async with BrowserGymEnv(base_url=url_for_delay(delay)) as env:
            for script in SCRIPTS:
                runs = [await play(env, script, seed) for seed in range(seeds)]
                table.setdefault(script, {})[str(delay)] = [
                    (r["reward"], r["raw_reward"], r["steps"]) for r in runs
                ]
    same = {s: all(v == next(iter(d.values())) for v in d.values()) for s, d in table.items()}
    mean = {s: {k: sum(r[0] or 0 for r in v) / seeds for k, v in d.items()} for s, d in table.items()}
    return {"bench": "delay-check", "seeds": seeds, "delays": delays, "identical": same, "success": mean}


def machine() -> str:
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {mem_gib:.0f} GiB, no GPU"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bench", choices=["single", "concurrent", "delay-check"])
    p.add_argument("--url", default=None, help="a running server (default: start a local one)")
    p.add_argument("--episodes", type=int, default=40)
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--delays", type=float, nargs="+", default=[0.0, 0.5])
    p.add_argument("--out", type=Path, default=None, help="append the JSON result to this file")
    args = p.parse_args()

    servers: list[LocalEnvServer] = []

    def url(**options: Any) -> str:
        if args.url:
            return args.url
        server = LocalEnvServer(task="click-test", max_sessions=max(args.sessions, 1), **options).start()
        servers.append(server)
        return server.url

    try:
        if args.bench == "single":
            result = asyncio.run(bench_single(url(), args.episodes))
        elif args.bench == "concurrent":
            result = asyncio.run(bench_concurrent(url(), args.sessions, args.seconds))
        else:
            if args.url:
                p.error("delay-check starts its own servers (one per delay); drop --url")
            result = asyncio.run(delay_check(lambda d: url(pre_observation_delay=d), args.delays, args.seeds))
    finally:
        for server in servers:
            server.stop()
    result["machine"] = machine()
    result["command"] = "python " + " ".join(sys.argv)
    line = json.dumps(result)
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
