from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra.settings import MessagingSettings, ServiceSettings


class CrmSettings(MessagingSettings, ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    port: int = Field(8001, validation_alias="CRM_PORT")
    database_url: str = "sqlite+aiosqlite:///var/crm.db"
    files_dir: Path = Path("var/crm-files")
    max_upload_bytes: int = 50 * 1024 * 1024
    imports_dir: Path = Path("var/crm-imports")
    max_import_bytes: int = 200 * 1024 * 1024
    # A running import with no progress for this long is taken for stopped (its process
    # went away): it shows as failed and can be started again. Progress is written every
    # half second while rows are read, so only a dead process stays this quiet.
    import_stale_seconds: float = Field(120.0, gt=0)
    funnel_file: Path = Path(__file__).parent / "funnel.json"
    # Activities due within this many minutes get a reminder (and the owner's hook is called).
    remind_ahead_minutes: int = Field(15, ge=0)
    reminder_check_seconds: float = Field(30.0, gt=0)
    # A request the ECM has reported nothing about this many minutes after it was sent
    # shows sales that its delivery is held up (the API's `unanswered`).
    unanswered_after_minutes: int = Field(15, ge=1)
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "crm@localhost"
    consumer_group: str = "crm-service"
    # Commands applied together in one transaction (1: each in its own). Bigger saves
    # round trips; it also holds that transaction's locks longer (README "Configuration").
    consumer_batch: int = Field(100, ge=1, le=500)
