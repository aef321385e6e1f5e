"""Generates the AsyncAPI 3 document for every topic from the models in `schemas/`.

    python -m schemas.asyncapi > docs/asyncapi.json     # CI checks it is up to date
"""

from __future__ import annotations

import json
import sys

from pydantic.json_schema import models_json_schema

from schemas.envelope import Envelope
from schemas.registry import LATEST, TYPES_ON_TOPIC
from schemas.topics import BRIDGE_CONTROL, CRM_COMMANDS, CRM_EVENTS, ECM_COMMANDS, ECM_EVENTS, dead_letter_topic

REF = "#/components/schemas/{model}"

# topic -> (channel id, producer, consumer, message types, description)
CHANNELS = [
    (CRM_EVENTS, "crmEvents", "crm", "sync-bridge", TYPES_ON_TOPIC[CRM_EVENTS],
     "Events the CRM publishes through its outbox. Key: CRM organization id."),
    (ECM_COMMANDS, "ecmCommands", "sync-bridge", "ecm", TYPES_ON_TOPIC[ECM_COMMANDS],
     "Commands the bridge sends to the ECM. Key: CRM organization id."),
    (ECM_EVENTS, "ecmEvents", "ecm", "sync-bridge", TYPES_ON_TOPIC[ECM_EVENTS],
     "Events the ECM publishes through its outbox. Key: ECM counterparty id."),
    (CRM_COMMANDS, "crmCommands", "sync-bridge", "crm", TYPES_ON_TOPIC[CRM_COMMANDS],
     "Commands the bridge sends to the CRM. Key: CRM organization id."),
]

HEADERS = {
    "type": "object",
    "properties": {
        "event_id": {"type": "string", "format": "uuid"},
        "type": {"type": "string"},
        "correlation_id": {"type": "string"},
    },
}
DLQ_HEADERS = {
    "type": "object",
    "properties": {f"dlq.{k}": {"type": "string"} for k in (
        "source.topic", "source.partition", "source.offset", "error.class", "error.message", "attempts",
        "consumer", "failed_at")},
}


def _message_id(type_: str) -> str:
    return type_.replace(".", "_")


def build() -> dict:
    models = [model for _, model in LATEST.values()]
    _, defs = models_json_schema([(m, "validation") for m in [Envelope, *models]], ref_template=REF)
    schemas = defs.get("$defs", {})
    messages, channels, operations = {}, {}, {}
    for type_, (version, model) in sorted(LATEST.items()):
        messages[_message_id(type_)] = {
            "name": type_,
            "title": f"{type_} v{version}",
            "summary": (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else type_,
            "contentType": "application/json",
            "headers": HEADERS,
            "payload": {
                "allOf": [
                    {"$ref": REF.format(model="Envelope")},
                    {"type": "object", "properties": {
                        "type": {"const": type_}, "schema_version": {"const": version},
                        "payload": {"$ref": REF.format(model=model.__name__)}}},
                ]
            },
        }
    for topic, channel_id, producer, consumer, types, description in CHANNELS:
        refs = {_message_id(t): {"$ref": f"#/components/messages/{_message_id(t)}"} for t in types}
        channels[channel_id] = {"address": topic, "description": description, "messages": refs}
        op_refs = [{"$ref": f"#/channels/{channel_id}/messages/{m}"} for m in refs]
        operations[f"{producer.replace('-', '_')}_sends_{channel_id}"] = {
            "action": "send", "channel": {"$ref": f"#/channels/{channel_id}"}, "messages": op_refs}
        operations[f"{consumer.replace('-', '_')}_receives_{channel_id}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{channel_id}"}, "messages": op_refs}
        dlq_id = f"{channel_id}DeadLetters"
        channels[dlq_id] = {
            "address": dead_letter_topic(topic),
            "description": f"Records from {topic} that could not be handled: the original key, value and "
                           "headers, plus the error context in dlq.* headers.",
            "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
        }
    messages["deadLetter"] = {"name": "dead letter", "contentType": "application/octet-stream",
                              "headers": DLQ_HEADERS, "payload": {"description": "the original record's value"}}
    channels["bridgeControl"] = {
        "address": BRIDGE_CONTROL, "description": "Operator decisions: pause/resume per direction (key).",
        "messages": {"directionState": {"$ref": "#/components/messages/directionState"}},
    }
    messages["directionState"] = {"name": "direction state", "contentType": "application/json", "payload": {
        "type": "object", "required": ["paused", "at"], "properties": {
            "paused": {"type": "boolean"}, "reason": {"type": ["string", "null"]},
            "by": {"type": "string"}, "at": {"type": "string", "format": "date-time"}}}}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "CRM–ECM bridge",
            "version": "1.0.0",
            "description": "Topics between the CRM, the sync bridge and the ECM. Generated from schemas/ by "
                           "`python -m schemas.asyncapi`; do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False, sort_keys=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
