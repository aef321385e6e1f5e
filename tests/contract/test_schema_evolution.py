"""Schema evolution: v1 messages still in topics keep working after v2, the
compatibility check catches breaking changes, and the AsyncAPI document is current."""

import json
from pathlib import Path

from pydantic import BaseModel

from schemas import compatibility, crm_events, registry
from schemas.asyncapi import render
from schemas.registry import parse_message

ROOT = Path(__file__).resolve().parents[2]
V1 = ROOT / "schemas" / "golden" / "crm.approval_requested.v1.json"


def test_the_repository_schemas_are_backward_compatible():
    assert compatibility.check() == []


def test_a_v1_message_reads_as_v2_with_no_addresses():
    message = parse_message(V1.read_bytes())
    assert message.envelope.schema_version == 1
    assert isinstance(message.payload, crm_events.ApprovalRequestedV2)
    assert message.payload.organization.addresses == []
    assert message.payload.organization.name == json.loads(V1.read_text())["payload"]["organization"]["name"]


def test_a_new_required_field_without_an_upcaster_is_reported(monkeypatch):
    class Breaking(crm_events.ApprovalRequestedV2):
        region_code: str  # required, and old messages do not have it

    monkeypatch.setitem(registry.LATEST, crm_events.APPROVAL_REQUESTED, (2, Breaking))
    problems = compatibility.check()
    assert any("crm.approval_requested.v1.json" in p for p in problems)
    assert any("crm.approval_requested.v2.json" in p for p in problems)


def test_a_version_bump_without_upcaster_or_example_is_reported(monkeypatch):
    monkeypatch.setitem(registry.LATEST, crm_events.APPROVAL_REQUESTED, (3, crm_events.ApprovalRequestedV2))
    problems = compatibility.check()
    assert any("no upcaster" in p for p in problems)
    assert any("v3: no golden example" in p for p in problems)


def test_an_upcaster_that_drops_data_is_reported(monkeypatch):
    class Lossy(BaseModel):
        approval_request_id: str

    monkeypatch.setitem(registry.LATEST, crm_events.APPROVAL_REQUESTED, (2, Lossy))
    assert any("fields dropped on read" in p for p in compatibility.check())


def test_the_asyncapi_document_is_generated_from_the_current_schemas():
    assert (ROOT / "docs" / "asyncapi.json").read_text() == render(), \
        "docs/asyncapi.json is stale: run `python -m schemas.asyncapi > docs/asyncapi.json`"


def test_every_reference_in_the_asyncapi_document_resolves():
    doc = json.loads(render())
    assert doc["asyncapi"].startswith("3.")

    def refs(node):
        if isinstance(node, dict):
            if "$ref" in node:
                yield node["$ref"]
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(doc))
    assert found
    for ref in found:
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
    on_channels = {ref.rsplit("/", 1)[-1] for c in doc["channels"].values() for ref in
                   (m["$ref"] for m in c["messages"].values())}
    assert {t.replace(".", "_") for t in registry.LATEST} <= on_channels
    addresses = {c["address"] for c in doc["channels"].values()}
    assert {"crm.events", "ecm.commands", "ecm.events", "crm.commands", "crm.events.dlq"} <= addresses


def test_every_message_type_travels_on_exactly_one_topic_of_its_own_side():
    # The published counts start at 0 from this table, and the AsyncAPI channels list it:
    # a new type left out would be charted only from its second message.
    on_topics = [t for types in registry.TYPES_ON_TOPIC.values() for t in types]
    assert sorted(on_topics) == sorted(registry.LATEST)
    for topic, types in registry.TYPES_ON_TOPIC.items():
        module = "schemas." + topic.replace(".", "_")  # crm.events -> schemas.crm_events
        assert {registry.LATEST[t][1].__module__ for t in types} == {module}, topic
