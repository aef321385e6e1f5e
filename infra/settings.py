"""Settings every deployable shares; each one extends it with its own prefix."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings

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

    # Secrets that must be real outside development.
    required_secrets: ClassVar[tuple[str, ...]] = ("integration_token",)

    @property
    def is_development(self) -> bool:
        return self.app_env == "development"

    @property
    def json_logs(self) -> bool:
        return self.log_json if self.log_json is not None else not self.is_development

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
