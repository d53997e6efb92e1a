"""ChatFormat refuses, at load, a chat template that cannot grow an episode turn by turn."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from browserrl.modeling import load_tokenizer, resolve_model_path
from browserrl.rollout import ChatFormat

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture
def tokenizer():
    return load_tokenizer(resolve_model_path(OmegaConf.create({"source": "tiny", "seed": 0})))


def test_chatml_history_is_a_prefix_of_the_next_prompt(tokenizer):
    tokenizer.chat_template = CHATML
    chat = ChatFormat(tokenizer, "<|im_end|>")
    history = [{"role": "user", "content": "page 1"}, {"role": "assistant", "content": "click('3')"}]
    ids = chat.continuation_ids(history, "page 2")
    assert tokenizer.decode(ids) == "\n<|im_start|>user\npage 2<|im_end|>\n<|im_start|>assistant\n"


def test_template_that_rewrites_past_turns_fails_at_load(tokenizer):
    # Like templates that strip or summarize earlier assistant turns: the episode's tokens would not be
    # the tokens the next prompt renders.
    tokenizer.chat_template = CHATML.replace(
        "{{ m.content }}",
        "{% if m.role == 'assistant' and not loop.last %}...{% else %}{{ m.content }}{% endif %}",
    )
    with pytest.raises(ValueError, match="re-renders earlier turns"):
        ChatFormat(tokenizer, "<|im_end|>")


def test_end_of_turn_token_must_be_written(tokenizer):
    tokenizer.chat_template = CHATML
    with pytest.raises(ValueError, match="model.eot_token"):
        ChatFormat(tokenizer, "<|endoftext|>")
