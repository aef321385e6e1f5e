"""Golden examples are the contract between producers and consumers: every message
type has one for its latest version, and it parses without losing a field."""

import json
from pathlib import Path

import pytest

from crm_service.service_layer.handlers import ACCEPTED_COMMANDS as CRM_ACCEPTS
from ecm_service.service_layer.commands import ACCEPTED_COMMANDS as ECM_ACCEPTS
from schemas.registry import LATEST, parse_message
from sync_bridge.handling import CRM_TO_ECM, ECM_TO_CRM

GOLDEN = Path(__file__).resolve().parents[2] / "schemas" / "golden"
EXAMPLES = sorted(GOLDEN.glob("*.json"))


def test_every_message_type_has_a_golden_example_of_its_latest_version():
    have = {p.name for p in EXAMPLES}
    assert {f"{t}.v{v}.json" for t, (v, _) in LATEST.items()} <= have


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_golden_example_round_trips(path):
    raw = json.loads(path.read_text())
    message = parse_message(path.read_bytes())
    assert message.envelope.type == raw["type"]
    if raw["schema_version"] == LATEST[raw["type"]][0]:
        assert message.payload.model_dump(mode="json") == raw["payload"]
    else:  # older versions are upcast on read (checked field by field in test_schema_evolution)
        assert message.payload.model_dump(mode="json") != raw["payload"]


def test_every_type_has_exactly_one_consumer():
    consumers = [CRM_ACCEPTS, ECM_ACCEPTS, CRM_TO_ECM.accepted_types, ECM_TO_CRM.accepted_types]
    for type_ in LATEST:
        assert sum(type_ in accepted for accepted in consumers) == 1, type_
