"""Held-out evaluation time by env session count: what `eval.sessions` buys.

    python benchmarks/bench_eval.py --sessions 8,24 +experiment=cpu_suite eval.num_seeds=8
    python benchmarks/bench_eval.py --sessions 8,24 +experiment=cpu_suite \
        model.source=path model.name_or_path=RUN/sft/final          # a warm-started (full-model) folder

For each session count, the evaluation a run makes after training (browserrl.evaluate.heldout_report:
every task of the run on the held-out seeds, sampled and greedy), of the configured model, on one env server,
nothing cached. An evaluation plays its episodes that many at a time: more sessions, larger generation
batches, and more Chromiums. Reports wall time, episodes per minute, success, and peak memory: this
process's RSS and the machine's (the env server's Chromiums included). Arguments after the options are
train.py overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from browserrl import build
from browserrl.compose import compose
from browserrl.config import bf16_autocast, preflight, validate
from browserrl.evaluate import heldout_report
from browserrl.memory import peak_memory_mb, reset_peak_memory
from browserrl.modeling import load_policy
from browserrl.rollout import ChatFormat, model_policy


class MachinePeak:
    """The machine's peak used memory while the block runs, sampled every second."""

    def __init__(self) -> None:
        self.peak_mb, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            self.peak_mb = max(self.peak_mb, psutil.virtual_memory().used / 2**20)

    def __enter__(self) -> MachinePeak:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", default="8,24", help="session counts, comma separated")
    p.add_argument("--out", type=Path, default=Path("outputs/bench_eval.json"), help="the report")
    p.add_argument("overrides", nargs="*", help="train.py overrides (+experiment=cpu_suite eval.num_seeds=8)")
    args = p.parse_args()
    cfg = compose(*args.overrides)
    validate(cfg)
    preflight(cfg)
    model, tokenizer = load_policy(cfg.model)
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    generator = build.hf_generator(model, chat, cfg)
    episodes = len(cfg.suite.tasks) * cfg.eval.num_seeds * (2 if cfg.eval.greedy else 1)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, bf16={bf16_autocast(cfg)}",
        "overrides": args.overrides,
        "episodes": episodes,
    }
    counts = [int(s) for s in args.sessions.split(",")]
    cfg.eval.sessions = max(counts)  # the local server's capacity
    with build.env_pool(cfg) as pool:
        engine = build.rollout_engine(model_policy(generator), pool, chat, cfg)
        for sessions in counts:
            cfg.eval.sessions = sessions
            reset_peak_memory()
            start = time.perf_counter()
            with MachinePeak() as machine:
                metrics = heldout_report(engine, cfg, "eval")  # on eval.sessions sessions
            seconds = time.perf_counter() - start
            report[f"sessions={sessions}"] = row = {
                "wall_s": round(seconds, 1),
                "episodes_per_min": round(episodes / seconds * 60, 1),
                "success_rate": round(metrics["eval/success_rate"], 3),
                "greedy_success_rate": round(metrics.get("eval/greedy_success_rate", float("nan")), 3),
                "peak_rss_mb": round(peak_memory_mb()["peak_rss_mb"]),
                "machine_peak_mb": round(machine.peak_mb),
            }
            print(json.dumps({f"sessions={sessions}": row}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
