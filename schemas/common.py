"""Value types that appear in both sides' messages."""

from pydantic import BaseModel, ConfigDict, Field


class Contract(BaseModel):
    """Base for payloads: unknown fields are tolerated so producers may add optional data."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ExternalRef(Contract):
    system: str = Field(min_length=1, max_length=32)
    id: str = Field(min_length=1, max_length=64)

    def as_text(self) -> str:
        return f"{self.system}:{self.id}"
