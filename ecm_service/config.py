from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from infra.settings import ServiceSettings


class EcmSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="ECM_", extra="ignore")

    port: int = Field(8002, validation_alias="ECM_PORT")
    database_url: str = "sqlite+aiosqlite:///var/ecm.db"
    content_dir: Path = Path("var/ecm-content")
    imports_dir: Path = Path("var/ecm-imports")
    max_import_bytes: int = 2 * 1024 * 1024 * 1024
    routes_file: Path = Path(__file__).parent / "approval_routes.json"
    document_types_file: Path = Path(__file__).parent / "document_types.json"
    delay_reasons_file: Path = Path(__file__).parent / "delay_reasons.json"
    deadline_check_seconds: float = Field(30.0, gt=0)
    max_upload_bytes: int = 50 * 1024 * 1024
    consumer_group: str = "ecm-service"
