from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra.settings import MessagingSettings, ServiceSettings


class EcmSettings(MessagingSettings, ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ECM_", extra="ignore")

    port: int = Field(8002, validation_alias="ECM_PORT")
    database_url: str = "sqlite+aiosqlite:///var/ecm.db"
    content_dir: Path = Path("var/ecm-content")
    imports_dir: Path = Path("var/ecm-imports")
    max_import_bytes: int = 2 * 1024 * 1024 * 1024
    # A bulk load that has written no progress for this long was interrupted (the process
    # running it went away): it shows as failed. Progress is written after every chunk of
    # 5,000 rows, seconds apart, so only a dead process stays this quiet.
    bulk_load_stale_seconds: float = Field(120.0, gt=0)
    routes_file: Path = Path(__file__).parent / "approval_routes.json"
    document_types_file: Path = Path(__file__).parent / "document_types.json"
    delay_reasons_file: Path = Path(__file__).parent / "delay_reasons.json"
    deadline_check_seconds: float = Field(30.0, gt=0)
    max_upload_bytes: int = 50 * 1024 * 1024
    consumer_group: str = "ecm-service"
    # Commands applied together in one transaction (1: each in its own). Bigger saves
    # round trips; it also holds that transaction's locks longer (README "Configuration").
    consumer_batch: int = Field(100, ge=1, le=500)
    # Match-or-propose (README "Matching"); defaults are `domain.matching.Thresholds`.
    match_name_propose: float = Field(85.0, ge=0, le=100)
    match_name_with_id: float = Field(70.0, ge=0, le=100)
    match_slip_min_length: int = Field(4, ge=1)
    match_prefetch: int = Field(100, ge=1, le=1000)
    match_bulk_prefetch: int = Field(40, ge=1, le=1000)
    match_scored: int = Field(20, ge=1, le=200)
    match_max_postings: int = Field(100, ge=10, le=100_000)
    # Processes that match an initial sync's batches (0: in the service's own process).
    match_workers: int = Field(2, ge=0, le=64)
