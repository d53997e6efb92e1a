"""Scripted oracles: unit cases from hand-written trees, replay of recorded book-flight episodes, and the
book-flight oracle on real pages through the env server (with the per-episode observation delay it needs)."""

from __future__ import annotations

import json

import pytest

from browserrl.config import task_configs
from browserrl.modeling import load_tokenizer, resolve_model_path
from browserrl.oracle import book_flight_action, oracle_action
from browserrl.pool import EnvPool
from browserrl.rollout import ChatFormat
from browserrl.sft import collect_demonstrations, oracle_engine
from tests.helpers import ROOT

ENTER = "RootWebArea 'Enter Text Task', focused\n\t[14] textbox ''\n\t[15] button 'Submit'"
EPISODES = json.loads((ROOT / "tests/fixtures/book_flight_episodes.json").read_text())["episodes"]


def test_simple_tasks_from_goal_and_axtree():
    buttons = "RootWebArea 'x'\n\t[12] button 'submit'\n\t[16] textbox ''\n\t[18] button 'cancel'"
    assert oracle_action('Click on the "cancel" button.', buttons) == "click('18')"
    assert oracle_action("Click button TWO.", "\t[13] button 'ONE'\n\t[14] button 'TWO'") == "click('14')"
    assert oracle_action("Focus into the textbox.", "\t[12] textbox ''") == "click('12')"
    goal = 'Enter "Kanesha" into the text field and press Submit.'
    assert oracle_action(goal, ENTER) == "fill('14', 'Kanesha')"
    filled = ENTER.replace("textbox ''", "textbox '' value='Kanesha', focused")
    assert oracle_action(goal, filled) == "click('15')"
    masked = "\t[16] textbox '' value='\u2022\u2022'\n\t[19] textbox ''\n\t[20] button 'Submit'"
    assert oracle_action('Enter the password "ab" into both text fields and press submit.', masked) == (
        "fill('19', 'ab')"
    )
    assert oracle_action('Click on the link "sed".', "\tStaticText 'sed'") is None  # no bid to click


FORM = (
    "RootWebArea 'Book Flight Task', focused\n\t[19] textbox 'From:'{from_value}\n\t[21] textbox 'To:'\n"
    "\tStaticText 'Departure Date'\n\t[25] textbox ''\n\t[27] button 'Search'\n"
)
GOAL = "Book the cheapest one-way flight from: IRC to: Salina, KS on 10/29/2016."


def test_book_flight_types_then_picks_the_autocomplete_entry():
    assert book_flight_action(GOAL, FORM.format(from_value="")) == "fill('19', 'IRC')"
    typed = FORM.format(from_value=" value='IRC', focused")
    first = typed + "\t[29] list ''\n\t\t[34] listitem ''\n\t\t\tStaticText 'Circle, AK (IRC)'\n"
    assert book_flight_action(GOAL, first) == "click('34')"
    # The entry further down the list may not be clickable: type it in full so it is alone at the top.
    lower = typed + (
        "\t[29] list ''\n\t\t[34] listitem ''\n\t\t\tStaticText 'Birch Creek, AK (KBC)'\n"
        "\t\t[38] listitem ''\n\t\t\tStaticText \"Circle, AK (IRC)\"\n"
    )
    assert book_flight_action(GOAL, lower) == "fill('19', 'Circle, AK (IRC)')"
    assert book_flight_action(GOAL, typed) == "click('19')"  # typed, list closed: reopen it


def test_book_flight_pages_the_date_picker_then_picks_the_day():
    done = " value='Circle, AK (IRC)'"
    form = FORM.format(from_value=done).replace("'To:'", "'To:' value='Salina, KS (SLN)'")
    assert book_flight_action(GOAL, form) == "click('25')"  # read-only box: open the picker
    picker = form + "\t[35] link 'Prev'\n\tStaticText 'Next'\n\tStaticText 'December'\n\tStaticText '2016'\n"
    assert book_flight_action(GOAL, picker) == "click('35')"  # December -> October: back
    october = picker.replace("December", "October") + "\t\t\t\t[90] link '29'\n\t\t\t\t[92] link '30'\n"
    assert book_flight_action(GOAL, october) == "click('90')"
    dated = form.replace("[25] textbox ''", "[25] textbox '' value='10/29/2016'")
    assert book_flight_action(GOAL, dated) == "click('27')"


def test_book_flight_books_the_cheapest_or_the_shortest():
    results = (
        "\t[141] button 'Back'\n\tStaticText 'Duration:'\n\tStaticText '28h 49m'\n"
        "\t[167] button 'Book flight for $479'\n\tStaticText 'Duration:'\n\tStaticText '2h 25m'\n"
        "\t[189] button 'Book flight for $991'\n\tStaticText 'Duration:'\n\tStaticText '15h 22m'\n"
        "\t[233] button 'Book flight for $1023'\n"
    )
    assert book_flight_action(GOAL, results) == "click('167')"
    assert book_flight_action(GOAL.replace("cheapest", "shortest"), results) == "click('189')"


@pytest.mark.parametrize("episode", EPISODES, ids=lambda e: f"seed{e['seed']}")
def test_recorded_solved_episodes_replay(episode):
    """Each recorded page gets the action that, on the real page, led to reward 1."""
    assert episode["reward"] == 1.0
    for step in episode["steps"]:
        assert oracle_action(episode["goal"], step["axtree"]) == step["oracle"]


@pytest.mark.browser
def test_book_flight_oracle_solves_real_pages(compose_cfg, env_url):
    """Through the server and the training pool, as the SFT warm-up plays it (only solved episodes kept)."""
    cfg = compose_cfg("task=book-flight")
    chat = ChatFormat(load_tokenizer(resolve_model_path(cfg.model)), cfg.model.eot_token)
    seeds = [3, 11, 1000071]
    pool = EnvPool(lambda: env_url, size=len(seeds))
    try:
        engine = oracle_engine(pool, chat, task_configs(cfg), None)  # the task's 0.4 s observation delay
        demos = collect_demonstrations(engine, [("book-flight", s) for s in seeds])
    finally:
        pool.close()
    assert [d.seed for d in demos] == seeds
    assert all(8 <= d.steps <= 10 for d in demos)
