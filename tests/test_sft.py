"""SFT warm-up: oracle demonstrations on real pages in the RL token format, tiny-lfm2 SFT -> loadable."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf, open_dict

from browserrl.env.pool import EnvPool
from browserrl.modeling import load_policy
from browserrl.rollout import ChatFormat
from browserrl.sft import collect_demonstrations, start_from, train_sft


@pytest.mark.browser
@pytest.mark.slow
def test_demonstrations_train_a_loadable_checkpoint(compose_cfg, root, env_url, tmp_path):
    cfg = compose_cfg("model=tiny-lfm2", "infra=cpu", "tuning=lora")
    with open_dict(cfg):
        cfg.sft = OmegaConf.load(root / "conf/sft/oracle.yaml")
        cfg.sft.trainer.update(max_steps=1, per_device_train_batch_size=2, logging_steps=1)
    model, tokenizer = load_policy(cfg.model)
    chat = ChatFormat(tokenizer)
    instances = [("click-test", 1), ("click-button", 1), ("focus-text", 1), ("enter-text", 1)]
    pool = EnvPool(lambda: env_url, size=4)
    try:
        demos = collect_demonstrations(pool, chat, cfg.task, instances)
    finally:
        pool.close()

    assert [(d.task, d.success) for d in demos] == [(t, True) for t, _ in instances]
    enter = demos[-1]
    assert [a.split("(")[0] for a in enter.actions] == ["fill", "click"]
    for demo in demos:
        assert len(demo.input_ids) == len(demo.completion_mask)
        taught = [t for t, m in zip(demo.input_ids, demo.completion_mask) if m]
        turns = tokenizer.decode(taught).split(chat.eot_token)
        assert turns == [*demo.actions, ""]  # exactly the actions, each closed by the end-of-turn token
        assert demo.input_ids[-1] == chat.eot_id

    final = train_sft(model, tokenizer, demos, cfg, tmp_path)
    assert not (final / "adapter_config.json").exists()  # LoRA merged: a plain model folder
    start_from(cfg, final)
    assert (cfg.model.source, cfg.model.name_or_path) == ("path", str(final))
    warm, _ = load_policy(cfg.model)
    assert type(warm).__name__ == "Lfm2ForCausalLM"
