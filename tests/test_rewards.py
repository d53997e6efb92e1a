from browserrl import rewards


def test_success_is_binary():
    assert rewards.success([], [], success=[True, False]) == [1.0, 0.0]


def test_format_is_valid_action_rate():
    assert rewards.action_format([], [], valid_action_rate=[1.0, 0.5, 0.0]) == [1.0, 0.5, 0.0]


def test_efficiency_discounts_steps():
    out = rewards.efficiency([], [], success=[True, True, True, False], steps=[1, 2, 4, 1], max_steps=[4] * 4)
    assert out == [1.0, 0.75, 0.25, 0.0]


def test_select_by_weight():
    funcs, weights = rewards.select({"success": 1.0, "format": 0.0, "efficiency": 0.5})
    assert [f.__name__ for f in funcs] == ["success", "efficiency"] and weights == [1.0, 0.5]
