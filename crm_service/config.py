from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra.settings import ServiceSettings


class CrmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="CRM_", extra="ignore")

    port: int = Field(8001, validation_alias="CRM_PORT")
    database_url: str = "sqlite+aiosqlite:///var/crm.db"
    files_dir: Path = Path("var/crm-files")
    max_upload_bytes: int = 50 * 1024 * 1024
    consumer_group: str = "crm-service"
