"""Dead letters as operators see them: listed, shown, and replayed to their source
topic after a fix. Replays are safe to repeat: every consumer dedupes by message id."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer

from infra.dead_letters import ERROR_HEADER_PREFIX, error_context, is_truncated
from infra.topic_inspection import read_records
from schemas.topics import DEAD_LETTER_TOPICS

REPLAYED_FROM = "replayed_from"


@dataclass(frozen=True)
class Letter:
    id: str  # <dlq topic>:<partition>:<offset>
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def context(self) -> dict[str, str]:
        return error_context(self.headers)

    @property
    def source_topic(self) -> str:
        return self.context.get("source.topic", self.id.split(":")[0].removesuffix(".dlq"))

    @property
    def message_type(self) -> str:
        headers = dict(self.headers)
        if "type" in headers:
            return headers["type"].decode(errors="replace")
        try:
            return str(json.loads(self.value or b"").get("type", "?"))
        except (ValueError, AttributeError):
            return "?"

    def summary(self) -> dict:
        ctx = self.context
        return {
            "id": self.id, "source": f"{ctx.get('source.topic')}:{ctx.get('source.partition')}:"
                                     f"{ctx.get('source.offset')}",
            "type": self.message_type, "error_class": ctx.get("error.class"),
            "error": ctx.get("error.message", "")[:160], "attempts": ctx.get("attempts"),
            "consumer": ctx.get("consumer"), "failed_at": ctx.get("failed_at"),
        }

    def detail(self) -> dict:
        try:
            payload = json.loads(self.value) if self.value is not None else None
        except ValueError:
            payload = (self.value or b"").decode(errors="replace")
        return {
            **self.summary(),
            "error": self.context.get("error.message"),
            "key": (self.key or b"").decode(errors="replace"),
            "headers": {k: v.decode(errors="replace") for k, v in self.headers},
            "payload": payload,
        }


async def list_letters(bootstrap: str, topics: list[str] | None = None) -> list[Letter]:
    letters = []
    for topic in topics or DEAD_LETTER_TOPICS:
        for r in await read_records(bootstrap, topic):
            letters.append(Letter(f"{topic}:{r.partition}:{r.offset}", r.key, r.value, list(r.headers or ())))
    return letters


def matches(letter: Letter, *, ids=(), source_topic=None, error_class=None, message_type=None) -> bool:
    return (
        (not ids or letter.id in ids)
        and (source_topic is None or letter.source_topic == source_topic)
        and (error_class is None or letter.context.get("error.class") == error_class)
        and (message_type is None or letter.message_type == message_type)
    )


class NotReplayable(Exception):
    pass


async def replay(bootstrap: str, letters: list[Letter]) -> int:
    """Writes each letter's original record back to its source topic, same key. A letter
    whose value was too large to keep whole is refused (nothing is replayed)."""
    cut = [letter.id for letter in letters if is_truncated(letter.headers)]
    if cut:
        raise NotReplayable(f"kept only in part (the message was over the size limit): {', '.join(cut)}")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for letter in letters:
            headers = [(k, v) for k, v in letter.headers
                       if not k.startswith(ERROR_HEADER_PREFIX) and k != REPLAYED_FROM]
            await producer.send_and_wait(letter.source_topic, value=letter.value, key=letter.key,
                                         headers=headers + [(REPLAYED_FROM, letter.id.encode())])
    finally:
        await producer.stop()
    return len(letters)
