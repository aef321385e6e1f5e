import json

import pytest

from schemas import registry
from schemas.registry import InvalidMessage, parse_message


def envelope(**overrides):
    body = {
        "event_id": "8f0b8f5e-8e8e-4c1e-9a55-5d0c7c3b1a01", "type": "crm.update_approval_status",
        "schema_version": 1, "occurred_at": "2026-11-22T10:00:00Z", "source": "sync-bridge",
        "correlation_id": "c-1", "causation_id": None,
        "payload": {"approval_request_id": "r", "status": "approved", "revision": 4, "registry_approval_id": "a"},
    }
    body.update(overrides)
    return json.dumps(body).encode()


def test_a_valid_message_parses_to_its_model():
    message = parse_message(envelope())
    assert message.payload.status == "approved" and message.payload.revision == 4


@pytest.mark.parametrize("raw, reason", [
    (None, "empty"),
    (b"{not json", "not a valid envelope"),
    (b"\xff\xfe", "not a valid envelope"),
    (envelope(type="crm.unknown"), "unknown message type"),
    (envelope(schema_version=9), "newer than supported"),
    (envelope(payload={"status": "approved"}), "invalid crm.update_approval_status payload"),
    (envelope(event_id="not-a-uuid"), "not a valid envelope"),
    (b"x" * (registry.MAX_MESSAGE_BYTES + 1), "exceeds"),
])
def test_bad_messages_are_invalid_with_a_reason(raw, reason):
    with pytest.raises(InvalidMessage, match=reason):
        parse_message(raw)


def test_types_a_consumer_does_not_accept_are_rejected():
    with pytest.raises(InvalidMessage, match="unknown message type"):
        parse_message(envelope(), frozenset({"ecm.start_approval"}))


def test_old_versions_are_upcast_on_read(monkeypatch):
    monkeypatch.setitem(registry.LATEST, "crm.update_approval_status",
                        (2, registry.LATEST["crm.update_approval_status"][1]))
    monkeypatch.setitem(registry.UPCASTERS, ("crm.update_approval_status", 1),
                        lambda p: {**p, "reason": "upcast from v1"})
    assert parse_message(envelope()).payload.reason == "upcast from v1"
    monkeypatch.delitem(registry.UPCASTERS, ("crm.update_approval_status", 1))
    with pytest.raises(InvalidMessage, match="no upcaster"):
        parse_message(envelope())


def test_an_invalid_message_says_which_fields_and_why_never_their_values():
    """The reason of an invalid message goes to the logs and the dead letter's headers;
    pydantic's own text quoted each wrong value (here a sole trader's name, a person's)."""
    bad_payload = envelope(type="crm.approval_requested", schema_version=2, payload={
        "approval_request_id": "r", "organization": {"id": "o", "name": ["ИП Петров Иван Сергеевич"]}})
    bad_envelope = envelope(correlation_id=["ИП Петров Иван Сергеевич"])
    for raw in (bad_payload, bad_envelope):
        with pytest.raises(InvalidMessage) as invalid:
            parse_message(raw)
        assert "Петров" not in str(invalid.value)
    with pytest.raises(InvalidMessage, match=r"organization\.name: Input should be a valid string"):
        parse_message(bad_payload)
    with pytest.raises(InvalidMessage, match=r"not a valid envelope: correlation_id: Input should be a valid string"):
        parse_message(bad_envelope)
