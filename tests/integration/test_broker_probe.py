"""The services' broker probe (`/health`, `/ready`, `service_dependency_up`) against the
real local broker."""

import logging

from infra.kafka import broker_reachable, make_producer


async def test_a_producer_not_yet_started_is_reported_away_without_an_error_in_the_log(broker, caplog):
    """A service probes its broker from the moment it starts, while its producer is still
    being started in the background. The probe asked the unstarted client for metadata,
    and aiokafka logged "Unable to update metadata from []" at error level: one such line
    per service at every `make run`, with nothing wrong."""
    producer = make_producer(broker)
    with caplog.at_level(logging.DEBUG, logger="aiokafka"):
        assert await broker_reachable(producer) is False
        await producer.start()
        try:
            assert await broker_reachable(producer) is True
        finally:
            await producer.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
