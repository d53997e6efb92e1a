"""browserrl.partway: the policy's first own turn sorted against the oracle's, and the table's counts."""

from __future__ import annotations

import pytest
from helpers import TINY, run_train

from browserrl.partway import first_turn_kind, partway_rows, starts
from browserrl.rollout import Episode

ORACLE = ["click('18')", "click('21')", "click('27')"]  # two boxes, then Submit


def episode(seed: int, actions: list[str], success: bool, task: str = "click-checkboxes") -> Episode:
    return Episode(task, seed, trace=[{"action": a} for a in actions], steps=len(actions), success=success)


@pytest.mark.parametrize(
    ("k", "action", "kind"),
    [
        (0, "click('18')", "oracle's"),
        (1, "click('21')", "oracle's"),
        (1, "click('18')", "repeat"),  # the box just checked, clicked again: unchecked
        (1, "click('27')", "ends early"),  # Submit with a box left
        (2, "click('27')", "oracle's"),  # Submit when it is due is the oracle's
        (0, "click('99')", "other"),
    ],
)
def test_first_turn_kind(k, action, kind):
    assert first_turn_kind(ORACLE, k, action) == kind


def test_rows_count_pages_solved_and_first_turns_per_start():
    """A 3-turn page and a 2-turn one (a page the oracle failed is left out): a row per (L, k), each policy's
    pages solved from there and its first own turn after the oracle's k."""
    oracle = [
        episode(0, ORACLE, True),
        episode(1, ["click('5')", "click('9')"], True),
        episode(2, ["click('5')"], False),
    ]
    assert starts(oracle) == [("click-checkboxes", 0, k) for k in range(3)] + [
        ("click-checkboxes", 1, k) for k in range(2)
    ]
    played = {
        "sft": [
            episode(0, ["click('27')"], False),  # Submit at once
            episode(0, ["click('18')", "click('18')", "click('27')"], False),  # k=1: a repeat
            episode(0, ["click('18')", "click('21')", "click('27')"], True),
            episode(1, ["click('5')", "click('9')"], True),
            episode(1, ["click('5')", "click('9')"], True),
        ],
        "grpo": [episode(0, ORACLE, True)] * 3 + [episode(1, ["click('5')", "click('9')"], True)] * 2,
    }
    rows = partway_rows(oracle, played)
    assert [(r["oracle steps"], r["oracle played"], r["pages"]) for r in rows] == [
        (2, 0, 1),
        (2, 1, 1),
        (3, 0, 1),
        (3, 1, 1),
        (3, 2, 1),
    ]
    three = {r["oracle played"]: r for r in rows if r["oracle steps"] == 3}
    assert [three[k]["sft solved"] for k in range(3)] == [0, 0, 1]
    assert [three[k]["sft first turn"] for k in range(3)] == ["ends early 1", "repeat 1", "oracle's 1"]
    assert all(three[k]["grpo solved"] == 1 and three[k]["grpo first turn"] == "oracle's 1" for k in range(3))


def test_rows_need_one_episode_per_start():
    with pytest.raises(ValueError):
        partway_rows([episode(0, ORACLE, True)], {"sft": [episode(0, ORACLE, True)]})


@pytest.mark.browser
@pytest.mark.slow
def test_script_plays_every_start_of_a_held_out_page():
    """scripts/partway.py as a user runs it: the oracle plays the page, then the base model each start."""
    done = run_train(
        "--base", "--task", "click-checkboxes", *TINY, "eval.num_seeds=1", "task.max_env_steps=8",
        script="scripts/partway.py", timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the oracle solved 1 of 1 held-out pages; greedy decoding" in done.stdout
    table = [line for line in done.stdout.splitlines() if line.startswith("| click-checkboxes |")]
    assert [line.split(" | ")[2] for line in table] == ["0", "1", "2"]  # seed 1000000: two boxes, Submit
