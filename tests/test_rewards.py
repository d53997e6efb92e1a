from browserrl import rewards
from browserrl.metrics import log_episodes


def test_success_is_binary():
    assert rewards.success([], [], success=[True, False]) == [1.0, 0.0]


def test_format_is_valid_action_rate():
    assert rewards.action_format([], [], valid_action_rate=[1.0, 0.5, 0.0]) == [1.0, 0.5, 0.0]


def test_efficiency_discounts_steps():
    out = rewards.efficiency([], [], success=[True, True, True, False], steps=[1, 2, 4, 1], max_steps=[4] * 4)
    assert out == [1.0, 0.75, 0.25, 0.0]


def test_select_by_weight():
    funcs, weights = rewards.select({"success": 1.0, "format": 0.0, "efficiency": 0.5})
    assert [f.__name__ for f in funcs] == ["success", "efficiency", "log_episodes"]
    assert weights == [1.0, 0.5, 0.0]  # the metric logger scores nothing


def test_log_episodes_logs_exact_means_and_scores_nothing():
    """Per-sample logging: TRL averages everything logged under a name, so rates are means over episodes
    (and the invalid-action rate a mean over actions), per task too."""
    logged: dict[str, list[float]] = {}
    out = log_episodes(
        prompts=["a", "b", "c"],
        completions=["", "", ""],
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
        generate_s=[2.5] * 3,
        env_s=[1.0] * 3,
        generated_tokens=[30] * 3,
        task=["click-test", "click-test", "enter-text"],
        success=[True, False, True],
        steps=[1, 4, 2],
        invalid_actions=[0, 4, 0],
        truncated=[False, True, False],
        env_error=[False, False, False],
        max_steps=[4, 4, 4],
    )
    assert out == [None, None, None]
    assert logged["success_rate"] == [1.0, 0.0, 1.0] and logged["click-test/success_rate"] == [1.0, 0.0]
    assert logged["enter-text/success_rate"] == [1.0] and logged["steps_to_success"] == [1.0, 2.0]
    assert sum(logged["invalid_action_rate"]) / len(logged["invalid_action_rate"]) == 4 / 7
    assert logged["success@1"] == [1.0, 0.0, 0.0] and logged["time/generate_s"] == [2.5]


def test_the_selected_logger_logs_each_task_s_total_reward():
    funcs, _ = rewards.select({"success": 1.0, "efficiency": 0.5})
    logged: dict[str, list[float]] = {}
    funcs[-1](
        prompts=["a", "b"],
        completions=["", ""],
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
        generate_s=[1.0] * 2,
        env_s=[1.0] * 2,
        generated_tokens=[9] * 2,
        task=["click-button", "enter-text"],
        success=[True, False],
        steps=[1, 4],
        max_steps=[4, 4],
        invalid_actions=[0, 0],
        truncated=[False, True],
        env_error=[False, False],
    )
    assert logged["click-button/reward"] == [1.5] and logged["enter-text/reward"] == [0.0]


def test_the_expert_s_and_guided_episodes_are_left_out_of_the_policy_s_metrics():
    """Success on whole pages is the policy's own: an episode the oracle played, or one started from the
    oracle's state part-way (grpo.guided), would count pages the policy did not solve alone."""
    logged: dict[str, list[float]] = {}
    rewards.select({"success": 1.0})[0][-1](
        prompts=["a", "b", "c"],
        completions=["", "", ""],
        log_metric=lambda name, value: logged.setdefault(name, []).append(value),
        generate_s=[1.0] * 3,
        env_s=[1.0] * 3,
        generated_tokens=[9] * 3,
        task=["click-checkboxes"] * 3,
        success=[False, True, True],
        steps=[2, 5, 3],
        max_steps=[8] * 3,
        invalid_actions=[0] * 3,
        truncated=[False] * 3,
        env_error=[False] * 3,
        expert=[False, True, False],
        guided=[False, False, True],
    )
    assert logged["success_rate"] == [0.0] and logged["click-checkboxes/reward"] == [0.0]
