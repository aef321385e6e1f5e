"""Settings every deployable shares; each one extends it with its own prefix."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from infra.business_day import zone_named
from infra.tokens import is_weak_secret


class ServiceSettings(BaseSettings):
    app_env: Literal["development", "test", "production"] = Field(
        "development", validation_alias=AliasChoices("APP_ENV")
    )
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    topic_partitions: int = Field(6, ge=1, validation_alias=AliasChoices("KAFKA_TOPIC_PARTITIONS"))
    topic_replication: int = Field(1, ge=1, validation_alias=AliasChoices("KAFKA_REPLICATION_FACTOR"))
    # How long a consumer's fetch may wait at the broker for records. Kafka answers as
    # soon as records arrive; the local Tansu broker waits the whole time, which added
    # ~0.25 s per hop here, ~1.2 s per approval (faust's own 1,500 ms on the bridge).
    fetch_max_wait_ms: int = Field(50, ge=1, le=10_000, validation_alias=AliasChoices("KAFKA_FETCH_MAX_WAIT_MS"))
    # How long the group coordinator waits for a consumer's heartbeat before it gives the
    # consumer's partitions to the others (a worker killed). Kafka refuses values below its
    # group.min.session.timeout.ms (6 s by default). The local Tansu broker holds every
    # joining consumer for half of it, so `make run` sets 6 s on its own broker.
    session_timeout_ms: int = Field(10_000, ge=1_000, le=300_000,
                                    validation_alias=AliasChoices("KAFKA_SESSION_TIMEOUT_MS"))
    # The garbage collector's youngest-generation threshold (Python's default: 700), set
    # once the process has started, after freezing what startup built (infra.runtime).
    gc_gen0_threshold: int = Field(10_000, ge=100, validation_alias=AliasChoices("GC_GEN0_THRESHOLD"))
    log_level: str = Field("INFO", validation_alias=AliasChoices("LOG_LEVEL"))
    log_json: bool | None = Field(None, validation_alias=AliasChoices("LOG_JSON"))
    host: str = "127.0.0.1"
    # How long the HTTP server keeps an idle connection open. Longer than clients' own
    # pool expiry (httpx: 5 s) and than load balancers' idle timeout (often 60 s), so that
    # a client never sends on a connection the server is closing at that moment (at
    # uvicorn's default of 5 s, 13 of 4,000 calls under load failed that way).
    http_keep_alive_seconds: int = Field(75, ge=1, le=3600, validation_alias=AliasChoices("HTTP_KEEP_ALIVE_SECONDS"))
    # How long a process trusts a token it has looked up (infra.users.UserDirectory); a
    # token deleted or changed in the database keeps working for up to this long. 0: off.
    token_cache_seconds: float = Field(5.0, ge=0, le=300, validation_alias=AliasChoices("TOKEN_CACHE_SECONDS"))
    # The token other deployables (the bridge) present to this one, role `integration`.
    integration_token: str | None = None
    # The company's time zone: where its days begin (deputies' date ranges, "my day") and
    # the clock its pages and messages show (infra.business_day, ADR 0016).
    business_timezone: str = Field("UTC", validation_alias=AliasChoices("BUSINESS_TIMEZONE"))

    # Secrets that must be real outside development.
    required_secrets: ClassVar[tuple[str, ...]] = ("integration_token",)

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else not self.is_development

    @field_validator("business_timezone")
    @classmethod
    def _a_known_time_zone(cls, name: str) -> str:
        zone_named(name)
        return name

    @model_validator(mode="after")
    def _secrets_are_real_outside_development(self):
        if self.is_development:
            return self
        prefix = self.model_config.get("env_prefix", "")
        for name in self.required_secrets:
            if is_weak_secret(getattr(self, name)):
                raise ValueError(
                    f"{prefix}{name.upper()} is missing or a demo value; set a strong secret outside development"
                )
        return self


class MessagingSettings(BaseSettings):
    """How long a service keeps its outbox and inbox rows (infra.messaging_retention);
    under the service's prefix (CRM_OUTBOX_KEEP_DAYS, ECM_INBOX_KEEP_DAYS, ...). 0 keeps
    them forever."""

    # Published rows stay this long for `bridgectl outbox replay`.
    outbox_keep_days: float = Field(7.0, ge=0)
    # Longer than anything that can bring a message back: dead letters are kept 30 days,
    # data topics 7 (deploy/kafka/create-topics.sh), outbox rows outbox_keep_days.
    inbox_keep_days: float = Field(45.0, ge=0)
    messaging_prune_seconds: float = Field(3600.0, gt=0)

    @model_validator(mode="after")
    def _inbox_outlives_the_outbox(self):
        keeps_outbox_forever = self.outbox_keep_days == 0
        if self.inbox_keep_days and (keeps_outbox_forever or self.inbox_keep_days < self.outbox_keep_days):
            prefix = self.model_config.get("env_prefix", "")
            raise ValueError(
                f"{prefix}INBOX_KEEP_DAYS ({self.inbox_keep_days:g}) must be 0 (forever) or at least "
                f"{prefix}OUTBOX_KEEP_DAYS ({self.outbox_keep_days:g}, 0 meaning forever): a republished "
                "outbox row must still find its inbox mark, or it is applied twice")
        return self
