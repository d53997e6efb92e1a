"""Held-out evaluation: the same episodes and metrics as training, on seeds training never sees.

In training: `heldout_report` before and after (and `PeriodicEval` during). For a suite: `evaluate_suite`
plays the base model, a trained checkpoint and the baselines that would expose a shortcut (the scripted
oracle, a random valid action, the best constant action) on every task, and writes per-task tables and bars.
Results that do not depend on a trained checkpoint are cached (`cached`): a sweep evaluates its base model
once, and the baselines are played once per suite and seed range.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import TrainerCallback

from browserrl import baselines, build, oracle
from browserrl.analysis import markdown_table, plot_suite
from browserrl.baselines import constant_action, constant_candidates, random_action
from browserrl.compat import log_line
from browserrl.compose import compose
from browserrl.config import bf16_autocast, task_configs, upgrade_saved
from browserrl.generation import HFGenerator
from browserrl.metrics import episode_metrics, jsonable
from browserrl.modeling import (
    cache_root,
    checkpoint_config,
    load_checkpoint,
    load_policy,
    model_identity,
    policy_device,
)
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat, Episode, Policy, RolloutEngine, model_policy, scripted_policy
from browserrl.traces import ScreenshotRecorder, record_trace, write_traces

log = logging.getLogger(__name__)

#: A task on which one constant action string solves this share of the held-out seeds does not test page
#: reading: the suite evaluation marks it and leaves it out of the suite mean.
NOT_READING = 0.5
#: Per-task columns of the table. truncated_rate: episodes cut by the step cap or the token budget (an
#: oracle truncated below its step cap means trainer.max_completion_length is too small for the task).
COLUMNS = (
    "episodes",
    "success@1",
    "success@max",
    "mean_steps",
    "invalid_action_rate",
    "truncated_rate",
    "env_errors",
)


def evaluation_config(
    checkpoint: Path | None, overrides: Sequence[str], suite: str | None = None
) -> DictConfig:
    """What an evaluation script plays by: the checkpoint's saved config with today's names and
    `overrides` on top, or without one conf/train.yaml composed with train.py's overrides; `suite`:
    conf/suite/SUITE.yaml's tasks instead of the run's. A bad group option or moved key raises Hydra's
    error or MovedKeyError."""
    if checkpoint is None:
        return compose(*([f"suite={suite}"] if suite else []), *overrides)
    saved = upgrade_saved(checkpoint_config(checkpoint))  # a run saved before a rename
    cfg = OmegaConf.merge(saved, OmegaConf.from_dotlist(list(overrides)))
    with open_dict(cfg):
        if suite:
            named = compose(f"suite={suite}")
            cfg.suite, cfg.tasks = named.suite, named.tasks
        cfg.trainer.pop("bf16", None)  # saved by runs before infra.precision alone decided it
        cfg.eval.setdefault("sessions", cfg.env.sessions)  # a run saved before eval.sessions existed
    return cfg


def heldout_seeds(cfg: DictConfig) -> list[int]:
    return list(range(cfg.eval.first_seed, cfg.eval.first_seed + cfg.eval.num_seeds))


def cached(key: dict[str, Any], compute: Callable[[], Any], use: bool = True) -> Any:
    """`compute()` once per key: the JSON result is kept under the cache root (eval/KEY.json) and read back
    by every later call with the same key: the runs of a sweep, a re-run of a suite evaluation."""
    if not use:
        return compute()
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_root() / "eval" / f"{digest}.json"
    if path.exists():
        log.info("evaluation read from the cache: %s (%s %s)", path, key["policy"], key["decoding"])
        return json.loads(path.read_text())["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"key": key, "result": result}, default=str) + "\n")
    tmp.rename(path)
    return result


def eval_key(
    cfg: DictConfig, policy: str, decoding: str, tasks: Sequence[str], runs: Sequence[int], kind: str
) -> dict[str, Any]:
    """What a held-out result depends on: the policy (the model's identity, or the scripts' code), each
    task's settings (prompt included), the seeds, decoding and sampling, precision and the token budget."""
    t = cfg.trainer
    scripted = decoding == "scripted"
    code = b"".join(Path(m.__file__).read_bytes() for m in (baselines, oracle))
    return {
        "kind": kind,
        "policy": policy,
        "model": None if scripted else model_identity(cfg.model),
        "scripts": hashlib.sha1(code).hexdigest()[:12] if scripted else None,
        "decoding": decoding,
        "tasks": {n: c.as_dict() for n, c in task_configs(cfg, list(tasks)).items()},
        "seeds": list(runs),
        "sampling": None if scripted else [t.temperature, t.top_p, t.get("top_k"), bf16_autocast(cfg)],
        "max_completion_length": t.max_completion_length,
    }


def play_seeded(
    engine: RolloutEngine,
    instances: list[tuple[str, int]],
    greedy: bool,
    progress: str | None = None,
    guided_steps: Sequence[int] | None = None,
) -> list[Episode]:
    """Episodes sampled with a fixed torch seed (the first instance's): the same noise for every model and
    every run, and the caller's random state left as it was. `guided_steps`: RolloutEngine.play's."""
    with torch.random.fork_rng():
        torch.manual_seed(instances[0][1])
        return engine.play(instances, greedy=greedy, progress=progress, guided_steps=guided_steps).episodes


@contextlib.contextmanager
def eval_sessions(pool: EnvPool, cfg: DictConfig) -> Iterator[EnvPool]:
    """The pool at `eval.sessions` sessions for this block (default: training's count). More sessions
    make larger generation batches but cost CPU and memory; on 2 CPU cores 24 were slower than 8
    (benchmarks/bench_eval.py, docs/benchmarks.md)."""
    size = pool.size
    pool.resize(cfg.eval.sessions)
    try:
        yield pool
    finally:
        pool.resize(size)


def heldout_report(
    engine: RolloutEngine,
    cfg: DictConfig,
    prefix: str,
    cache: bool = False,
    tasks: Sequence[str] | None = None,
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """`{prefix}/success_rate`, per task `{prefix}/TASK/success_rate`, ... over `tasks` (default: the
    suite's) on the held-out seeds, sampled at the training temperature; `{prefix}/greedy_*` if enabled;
    played on `eval.sessions` sessions. With `cache` (the base model: it is the same for every run of a
    sweep) the result is read from `cached` when it exists. With `out_dir`, each episode's outcome goes to
    out_dir/heldout/PREFIX-DECODING.json ([task, seed, success] rows): what a comparison of two policies on
    the same seeds pairs (browserrl.comparison.paired_difference)."""
    seeds, tasks = heldout_seeds(cfg), list(tasks or cfg.suite.tasks)
    report = {}
    with eval_sessions(engine.pool, cfg):  # both decodings on the same sessions (opened at first use)
        for decoding in ("sampled", "greedy") if cfg.eval.greedy else ("sampled",):

            def compute(decoding: str = decoding) -> dict[str, Any]:
                instances = [(task, s) for task in tasks for s in seeds]
                progress = f"held-out {prefix}, {decoding}"
                episodes = play_seeded(engine, instances, decoding == "greedy", progress)
                outcomes = [[e.task, e.seed, e.success] for e in episodes]
                return {"metrics": jsonable(episode_metrics(episodes)), "outcomes": outcomes}

            result = cached(eval_key(cfg, prefix, decoding, tasks, seeds, "outcomes"), compute, cache)
            metrics = result["metrics"]
            tag = "" if decoding == "sampled" else "greedy_"
            report |= {f"{prefix}/{tag}{k}": v for k, v in metrics.items()}
            if out_dir is not None:
                path = out_dir / "heldout" / f"{prefix.replace('/', '-')}-{decoding}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(result["outcomes"]) + "\n")
            log.info(
                "held-out %s, %s: success %.3f over %d episodes (%s; %d seeds each)",
                prefix,
                decoding,
                metrics["success_rate"],
                len(tasks) * len(seeds),
                ", ".join(tasks),
                len(seeds),
            )
    return report


class PeriodicEval(TrainerCallback):
    """Held-out eval every `eval.every_steps` optimizer steps (0: never), on the live policy.

    It runs after that step's training log line and logs its own line at the same step through the HF
    Trainer's `log` (metrics.jsonl, W&B), so the analysis can draw held-out curves next to the training
    ones. `transformers.Trainer.log`, not GRPOTrainer's (browserrl.compat.log_line).
    """

    def __init__(self, engine: RolloutEngine, cfg: DictConfig, trainer: Any):
        self.engine, self.cfg, self.trainer = engine, cfg, trainer
        self.every = int(cfg.eval.get("every_steps") or 0)
        self.last_step = 0

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - HF callback signature
        step = state.global_step
        if self.every and step % self.every == 0 and step != self.last_step and "reward" in (logs or {}):
            self.last_step = step  # the log below calls on_log again: that call returns here
            log_line(self.trainer, heldout_report(self.engine, self.cfg, "eval"))


def task_rows(policy: str, decoding: str, episodes: Sequence[Episode], **extra: Any) -> list[dict[str, Any]]:
    """One row per task: the policy's held-out metrics on it."""
    rows = []
    for task in dict.fromkeys(e.task for e in episodes):
        mine = [e for e in episodes if e.task == task]
        metrics = {k: v for k, v in episode_metrics(mine).items() if "/" not in k}
        mean_steps = sum(e.steps for e in mine) / len(mine)
        row = {"policy": policy, "decoding": decoding, "task": task, **metrics, "mean_steps": mean_steps}
        rows.append(jsonable(row | extra))
    return rows


class SuiteEvaluation:
    """Held-out episodes of every task of a suite for several policies, in the same env sessions.

    Rows are (policy, decoding, task); traces go to out_dir/traces/POLICY-DECODING.json. Results that do not
    depend on a trained checkpoint are cached, unless screenshots are recorded.
    """

    def __init__(self, cfg: DictConfig, engine: RolloutEngine, out_dir: Path, recorder: Any, gif: bool):
        self.cfg, self.engine, self.out_dir, self.recorder, self.gif = cfg, engine, out_dir, recorder, gif
        self.tasks, self.seeds = list(cfg.suite.tasks), heldout_seeds(cfg)
        self.rows: list[dict[str, Any]] = []

    def play(
        self,
        name: str,
        policy: Policy,
        decoding: str,
        tasks: Sequence[str],
        runs: Sequence[int],
        cache: bool = True,
        traces: bool = True,
        **extra: Any,
    ) -> dict[str, Any]:
        """Rows (and trace records) of `policy` on every task of `tasks` and seed of `runs`."""

        def compute() -> dict[str, Any]:
            self.engine.policy = policy
            instances = [(t, s) for t in tasks for s in runs]
            episodes = play_seeded(self.engine, instances, decoding == "greedy", f"{name}, {decoding}")
            frames = self.recorder.take() if self.recorder else [[] for _ in episodes]
            return {
                "rows": task_rows(name, decoding, episodes, **extra),
                "traces": [record_trace(e, f) for e, f in zip(episodes, frames)],
            }

        key = eval_key(self.cfg, name, decoding, tasks, runs, "rows") | {"extra": extra}
        result = cached(key, compute, cache and self.recorder is None)
        if traces:
            write_traces(f"{name}-{decoding}", result["traces"], self.out_dir, self.gif)
        return result

    def model(self, name: str, generator: HFGenerator, samples: int, cache: bool) -> None:
        """Greedy on each seed, and sampled `samples` times per seed at the training temperature."""
        for decoding, runs in (("greedy", self.seeds), ("sampled", self.seeds * samples)):
            played = self.play(name, model_policy(generator), decoding, self.tasks, runs, cache=cache)
            self.rows += played["rows"]

    def baselines(self, chat: ChatFormat) -> None:
        """The scripted oracle (where one exists), a random valid action, and per task the constant action
        string that solves the most held-out seeds (candidates: the strings the oracle and the random
        policy played most on that task)."""
        with_oracle = [t for t in self.tasks if t in oracle.ORACLE_TASKS]
        played = []
        for name, act, tasks in (("oracle", oracle.act, with_oracle), ("random", random_action, self.tasks)):
            if tasks:
                result = self.play(name, scripted_policy(act, chat), "scripted", tasks, self.seeds)
                self.rows += result["rows"]
                played += result["traces"]
        for task in self.tasks:
            best = None
            for action in constant_candidates([t for t in played if t["task"] == task]):
                policy = scripted_policy(constant_action(action), chat)
                rows = self.play(
                    "constant", policy, "scripted", [task], self.seeds, traces=False, action=action
                )
                if best is None or rows["rows"][0]["success@max"] > best[0]["success@max"]:
                    best = rows["rows"]
            self.rows += best or []


def summary_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per task: success@max of every policy and decoding, the best constant action, whether the
    task reads the page (its constant action solves < NOT_READING); then the suite mean over the
    page-reading tasks (none where a policy lacks a task: the oracle on tasks without one)."""
    columns = list(dict.fromkeys(f"{r['policy']} {r['decoding']}".removesuffix(" scripted") for r in rows))
    table = []
    for task in dict.fromkeys(r["task"] for r in rows):
        row: dict[str, Any] = {"task": task}
        for r in (r for r in rows if r["task"] == task):
            row[f"{r['policy']} {r['decoding']}".removesuffix(" scripted")] = r["success@max"]
            if r["policy"] == "constant":
                row["constant action"] = r["action"]
        row["reads the page"] = "no" if (row.get("constant") or 0) >= NOT_READING else "yes"
        table.append(row)
    reading = [row for row in table if row["reads the page"] == "yes"]
    mean: dict[str, Any] = {"task": f"suite mean ({len(reading)} page-reading tasks)"}
    for column in columns:
        values = [row[column] for row in reading if row.get(column) is not None]
        mean[column] = sum(values) / len(values) if values and len(values) == len(reading) else None
    header = ["task", *columns, "constant action", "reads the page"]
    return [{k: row.get(k) for k in header} for row in [*table, mean]]


def evaluate_suite(
    cfg: DictConfig,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    samples: int = 1,
    with_baselines: bool = True,
    with_models: bool = True,
    screenshots: bool = False,
    gif: bool = False,
) -> list[dict[str, Any]]:
    """Held-out evaluation of the suite's tasks (cfg.suite.tasks on cfg.eval's seeds): the base model
    (cfg.model), the checkpoint if given (a run's final/ or checkpoints/checkpoint-N), the baselines.

    Writes into `out_dir`: results.json (one row per policy, decoding and task), success_table.md (per task,
    every policy's success and the suite mean over page-reading tasks; then the detailed rows),
    suite_success.png (per-task bars) and traces/; with `screenshots` a PNG per step, with `gif` a captioned
    GIF per episode.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    screenshots = screenshots or gif
    base, tokenizer = load_policy(cfg.model)
    device = policy_device(bool(cfg.trainer.get("use_cpu")))
    base.to(device)
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    with build.env_pool(cfg, cfg.eval.sessions, screenshot=screenshots) as pool:
        recorder = ScreenshotRecorder(pool) if screenshots else None
        base_generator = build.hf_generator(base, chat, cfg)
        engine = build.rollout_engine(model_policy(base_generator), recorder or pool, chat, cfg)
        suite = SuiteEvaluation(cfg, engine, out_dir, recorder, gif)
        if with_models:
            suite.model("base", base_generator, samples, cache=True)
        if with_models and checkpoint is not None:
            trained, _, _ = load_checkpoint(checkpoint)
            trained.to(device)
            suite.model("trained", build.hf_generator(trained, chat, cfg), samples, cache=False)
        if with_baselines:
            suite.baselines(chat)
    rows, seeds = suite.rows, suite.seeds
    (out_dir / "results.json").write_text(json.dumps(rows, indent=1) + "\n")
    if not with_models:
        what = "the baselines"
    elif checkpoint:
        what = f"{checkpoint} (trained) and its base model"
    else:
        what = f"the base model ({cfg.model.name}) and the baselines"
    temperature = build.sampling(cfg).temperature
    (out_dir / "success_table.md").write_text(
        f"Held-out evaluation of {what} on {len(suite.tasks)} tasks, seeds {seeds[0]}..{seeds[-1]}: success "
        f"rate, greedy and sampled ({samples} per seed, temperature {temperature}). A task whose best "
        f"constant action solves >= {NOT_READING} of the seeds does not read the page: it is left out of the "
        "suite mean.\n\n"
        + markdown_table(summary_rows(rows))
        + "\nPer policy and task:\n\n"
        + markdown_table([{k: r.get(k) for k in ("policy", "decoding", "task", *COLUMNS)} for r in rows])
    )
    plot_suite(rows, out_dir / "suite_success.png")
    return rows
