"""Held-out success from the oracle's state part-way through each page: which of a page's turns is lost.

    python scripts/partway.py RUN/sft/final RUN/final --task click-checkboxes eval.num_seeds=16
    python scripts/partway.py RUN/final --task login-user --base --decoding sampled

For each held-out seed of TASK the scripted oracle plays the page (L turns); then each policy plays it from
the start and from the oracle's state after each k = 1..L-1 of its turns (browserrl.partway). `--base`
adds the checkpoints' base model. Config and overrides as scripts/evaluate.py takes them (the first
checkpoint's saved config; without one, train.py's overrides). Prints a markdown table, a row per (oracle
steps L, turns the oracle played k): pages solved from there, and what each policy's first own turn did.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from hydra.errors import HydraException
from omegaconf import open_dict

from browserrl import build
from browserrl.analysis import markdown_table
from browserrl.compose import MovedKeyError
from browserrl.config import ConfigError, preflight, task_configs, validate
from browserrl.evaluate import evaluation_config, heldout_seeds, play_seeded
from browserrl.modeling import (
    load_checkpoint,
    load_policy,
    load_tokenizer,
    policy_device,
    resolve_model_path,
)
from browserrl.partway import partway_rows, starts
from browserrl.rollout import ChatFormat, model_policy


def label(checkpoint: Path) -> str:
    """RUN/final -> RUN, RUN/sft/final -> RUN/sft: the column's name."""
    return str(checkpoint.parent if checkpoint.name == "final" else checkpoint)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("args", nargs="*", help="checkpoints (RUN/final, RUN/sft/final), then dotted overrides")
    p.add_argument("--task", required=True, help="the task whose held-out pages are played")
    p.add_argument("--base", action="store_true", help="also the base model")
    p.add_argument("--decoding", choices=("greedy", "sampled"), default="greedy")
    args = p.parse_intermixed_args()
    checkpoints = [Path(a) for a in args.args if "=" not in a]
    overrides = [a for a in args.args if "=" in a]
    if not checkpoints and not args.base:
        raise SystemExit("nothing to play: name a checkpoint, or --base")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = evaluation_config(checkpoints[0] if checkpoints else None, overrides)
    except (HydraException, MovedKeyError) as exc:  # a bad group option or a moved key: one line
        raise SystemExit(f"config error: {exc}") from None
    with open_dict(cfg):
        cfg.suite.tasks = [args.task]
    try:
        validate(cfg, trains=False)
        preflight(cfg)
    except ConfigError as exc:
        raise SystemExit(f"config error: {exc}") from None

    tokenizer = load_tokenizer(resolve_model_path(cfg.model))
    device = policy_device(bool(cfg.trainer.get("use_cpu")))
    policies = {"base": load_policy(cfg.model)[0]} if args.base else {}  # loaded only when played
    policies |= {label(c): load_checkpoint(c)[0] for c in checkpoints}
    chat = ChatFormat(tokenizer, cfg.model.eot_token)
    tasks = task_configs(cfg)
    with build.env_pool(cfg, cfg.eval.sessions) as pool:
        pages = [(args.task, seed) for seed in heldout_seeds(cfg)]
        oracle = (
            build.demonstrator(pool, chat, cfg, tasks).play(pages, greedy=True, progress="oracle").episodes
        )
        instances = starts(oracle)
        if not instances:
            raise SystemExit(
                f"the oracle solved none of {args.task}'s pages: its episode cap (max_env_steps)?"
            )
        played = {}
        for name, model in policies.items():
            generator = build.hf_generator(model.to(device), chat, cfg)
            engine = build.rollout_engine(model_policy(generator), pool, chat, cfg, tasks, guided=True)
            played[name] = play_seeded(
                engine,
                [(task, seed) for task, seed, _ in instances],
                greedy=args.decoding == "greedy",
                progress=name,
                guided_steps=[k for *_, k in instances],
            )
    solved = sum(e.success for e in oracle)
    print(
        f"{args.task}: the oracle solved {solved} of {len(oracle)} held-out pages; {args.decoding} decoding\n"
    )
    print(markdown_table(partway_rows(oracle, played)))


if __name__ == "__main__":
    main()
