"""docs/mqtt-5-server.md, the MQTT 5.0 server checklist, stays usable.

Tests name the statement ids they cover ("[MQTT-3.3.2-6]" in a docstring or
comment); that only helps if the checklist's ids are well-formed and each
appears once, which is what this file checks. How many of them tests name is
reported as the reason of a skip, since coverage grows as the broker does.
"""

from __future__ import annotations

import re

import pytest

from tests.brokerproc import REPO

PAGE = REPO / "docs" / "mqtt-5-server.md"
ITEM = re.compile(r"^- \[[ x]\] \[([^\]]+)\]", re.M)
STATEMENT = re.compile(r"MQTT-[1-7]\.\d{1,2}(\.\d{1,2})?-\d{1,2}")
SECTION_TAG = re.compile(r"§\d+(\.\d+)*")
NAMED = re.compile(r"MQTT-[1-7]\.\d{1,2}(?:\.\d{1,2})?-\d{1,2}")
#: The 3.1.1 ids share the form (and sometimes the number, with another
#: meaning), so only modules that speak MQTT 5 count: "mqtt5" or a 5 at the
#: end of the module's name (test_codec5.py), paho's MQTTv5, or the level-5
#: test clients of tests/mqtt5_harness.py.
FIVE_NAME = re.compile(r"mqtt5|5\.py$")
FIVE = re.compile(r"MQTTv5|mqtt5_harness")


def checklist_ids() -> list[str]:
    return [tag for tag in ITEM.findall(PAGE.read_text()) if not tag.startswith("§")]


def test_every_item_starts_with_a_well_formed_tag():
    tags = ITEM.findall(PAGE.read_text())
    assert len(tags) > 150
    for tag in tags:
        assert STATEMENT.fullmatch(tag) or SECTION_TAG.fullmatch(tag), tag


def test_each_statement_has_one_item():
    ids = checklist_ids()
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    assert not repeated, f"listed more than once: {repeated}"


def test_how_many_statements_tests_name():
    ids = set(checklist_ids())
    named = set()
    for path in sorted((REPO / "tests").glob("test_*.py")):
        if path.name == "test_mqtt5_checklist.py":
            continue
        text = path.read_text()
        if FIVE_NAME.search(path.name) or FIVE.search(text):
            named.update(NAMED.findall(text))
    covered = ids & named
    # Named but not listed: client statements whose breach the server
    # detects (the list mentions them in parentheses), or a typo somewhere.
    text = PAGE.read_text()
    unlisted = sorted(i for i in named - ids if f"[{i}]" not in text)
    pytest.skip(f"MQTT 5 tests name {len(covered)} of the {len(ids)} server statements "
                f"in docs/mqtt-5-server.md (a report, not a check)"
                + (f"; named but nowhere in the list: {', '.join(unlisted)}" if unlisted else ""))
