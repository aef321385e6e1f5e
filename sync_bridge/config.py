from pathlib import Path
from typing import ClassVar

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra.settings import ServiceSettings


class BridgeSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="BRIDGE_", extra="ignore")

    app_id: str = "sync-bridge"
    crm_url: str = Field("http://127.0.0.1:8001", validation_alias="CRM_URL")
    ecm_url: str = Field("http://127.0.0.1:8002", validation_alias="ECM_URL")
    # The bridge's own service credentials (role `integration`), never a person's token.
    crm_token: str | None = None
    ecm_token: str | None = None
    web_port: int = 8003
    data_dir: Path = Path("var/bridge")
    # A failed call is tried this many times with backoff up to `retry_max_wait` seconds,
    # then the message is dead-lettered; while the API it needs is away (unreachable,
    # 503, 507) it is tried past them for as long as that lasts (ADR 0020).
    max_attempts: int = 12
    retry_max_wait: float = 10.0
    http_timeout: float = 30.0
    # faust's broker_max_poll_interval (its default): a worker that has fetched nothing
    # for this long (its agent waiting, its buffer of `stream_buffer_size` events full)
    # leaves the group, and rejoins once the agent has handled what it held.
    max_poll_interval: float = Field(1000.0, gt=0)
    stream_buffer_size: int = Field(4096, ge=1)
    # How long a stopping worker waits for its agents to finish what they hold (an agent
    # waiting out an outage would hold the stop for as long as it lasts).
    stop_wait_seconds: float = Field(5.0, gt=0)
    # The assigned partitions' events are taken together (each partition's in order),
    # `batch_size` at a time, waiting at most `batch_seconds` for a batch to fill; a
    # batch's small documents travel in two HTTP calls (see
    # sync_bridge.transfer.BatchLimits) and its commands are sent together.
    # batch_size 1 handles one event at a time.
    batch_size: int = Field(100, ge=1, le=1000)
    batch_seconds: float = Field(0.05, gt=0, le=5)
    batch_document_bytes: int = Field(1024 * 1024, ge=0)
    batch_bytes: int = Field(8 * 1024 * 1024, ge=1)

    required_secrets: ClassVar[tuple[str, ...]] = ("crm_token", "ecm_token")
