"""Value types that appear in both sides' messages."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Contract(BaseModel):
    """Base for payloads: unknown fields are tolerated so producers may add optional data."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ExternalRef(Contract):
    system: str = Field(min_length=1, max_length=32)
    id: str = Field(min_length=1, max_length=64)

    def as_text(self) -> str:
        return f"{self.system}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> ExternalRef:
        """The inverse of as_text: "crm:42" -> ExternalRef(system="crm", id="42")."""
        system, sep, ident = text.partition(":")
        if not sep or not system or not ident:
            raise ValueError(f"not an external ref: {text!r}")
        return cls(system=system, id=ident)
