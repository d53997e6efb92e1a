"""The page as the policy reads it: AX-tree lines parsed as BrowserGym writes them, and the compact rendering
keeping every element an action can name while costing fewer characters (recorded book-flight pages)."""

from __future__ import annotations

import json

from browserrl.prompts import clean_axtree, compact_axtree, parse_axtree, parse_line
from tests.helpers import ROOT

PAGES = [
    step["axtree"]
    for episode in json.loads((ROOT / "tests/fixtures/book_flight_episodes.json").read_text())["episodes"]
    for step in episode["steps"]
]
ACTIONABLE = {"button", "link", "textbox", "listitem", "combobox", "checkbox", "radio"}


def test_parse_line_reads_python_reprs():
    node = parse_line("\t\t[19] textbox 'From:' value='Circle, AK (IRC)', focused")
    assert node is not None
    assert (node.depth, node.bid, node.role, node.name, node.value) == (
        2,
        "19",
        "textbox",
        "From:",
        "Circle, AK (IRC)",
    )
    quoted = parse_line('\t\t\tStaticText "Devil\'s Lake, ND (DVL)"')
    assert quoted is not None and quoted.name == "Devil's Lake, ND (DVL)"
    assert (quoted.bid, quoted.value) == ("", None)
    assert parse_line("[... page truncated]") is None


def test_compact_keeps_every_actionable_element_and_costs_less():
    for page in PAGES:
        full, compact = clean_axtree(page), compact_axtree(clean_axtree(page))
        wanted = {(n.bid, n.name, n.value) for n in parse_axtree(full) if n.role in ACTIONABLE}
        kept = {(n.bid, n.name, n.value) for n in parse_axtree(compact) if n.role in ACTIONABLE}
        assert wanted == kept
        assert len(compact) < len(full)
    picker = max(PAGES, key=len)  # the open date picker: every day's cell gone, its link kept
    assert "cell '" not in compact_axtree(clean_axtree(picker))
    assert len(compact_axtree(clean_axtree(picker))) < 0.6 * len(clean_axtree(picker))


def test_compact_joins_a_flight_card_into_one_line():
    results = next(p for p in PAGES if "Book flight for" in p)
    lines = compact_axtree(clean_axtree(results)).splitlines()
    cards = [line for line in lines if "Depart:" in line]
    assert cards and all("Arrives:" in line and "Duration:" in line for line in cards)
    assert sum("button 'Book flight for $" in line for line in lines) == len(cards)
