import pytest
from pydantic import ValidationError

from crm_service.config import CrmSettings
from ecm_service.config import EcmSettings
from sync_bridge.config import BridgeSettings

STRONG = "k3J9xQ2vP8mZ4tR7wL1nB6yH5cF0dS2a"


@pytest.mark.parametrize("settings_cls, prefix", [(CrmSettings, "CRM"), (EcmSettings, "ECM")])
def test_services_refuse_missing_or_demo_secrets_outside_development(monkeypatch, settings_cls, prefix):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.delenv(f"{prefix}_INTEGRATION_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="INTEGRATION_TOKEN"):
        settings_cls()
    monkeypatch.setenv(f"{prefix}_INTEGRATION_TOKEN", "demo-token-demo-token-demo-token")
    with pytest.raises(ValidationError, match="INTEGRATION_TOKEN"):
        settings_cls()
    monkeypatch.setenv(f"{prefix}_INTEGRATION_TOKEN", STRONG)
    assert settings_cls().integration_token == STRONG


def test_development_runs_on_embedded_defaults(monkeypatch):
    for name in ("APP_ENV", "CRM_PORT", "ECM_PORT", "CRM_DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS"):
        monkeypatch.delenv(name, raising=False)
    crm, ecm = CrmSettings(), EcmSettings()
    assert (crm.port, ecm.port) == (8001, 8002)
    assert crm.database_url.startswith("sqlite+aiosqlite:///var/")
    assert crm.json_logs is False


def test_ports_are_overridable(monkeypatch):
    monkeypatch.setenv("CRM_PORT", "18001")
    monkeypatch.setenv("ECM_PORT", "18002")
    assert (CrmSettings().port, EcmSettings().port) == (18001, 18002)


def test_bridge_needs_its_own_credentials_outside_development(monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("BRIDGE_CRM_TOKEN", STRONG)
    monkeypatch.delenv("BRIDGE_ECM_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="BRIDGE_ECM_TOKEN"):
        BridgeSettings()
    monkeypatch.setenv("BRIDGE_ECM_TOKEN", STRONG[::-1])
    assert BridgeSettings().json_logs is True


def test_serve_keeps_idle_connections_longer_than_clients_do(monkeypatch):
    """uvicorn's default (5 s) equals httpx's pool expiry: a client could send on a
    connection the server was closing (ReadError under load)."""
    import sys
    from pathlib import Path

    import uvicorn

    from infra.service_cli import run_cli

    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(options, app=app))
    monkeypatch.setattr(sys, "argv", ["crm_service", "serve"])
    monkeypatch.delenv("HTTP_KEEP_ALIVE_SECONDS", raising=False)
    monkeypatch.delenv("CRM_INTEGRATION_TOKEN", raising=False)
    args = dict(service="crm", settings_cls=CrmSettings, users_table=None, migrations_dir=Path("."),
                app_factory="crm_service.entrypoints.app:create_app", seed_data=None)
    assert run_cli(**args) == 0
    assert served["timeout_keep_alive"] == 75 and served["port"] == 8001
    monkeypatch.setenv("HTTP_KEEP_ALIVE_SECONDS", "120")
    run_cli(**args)
    assert served["timeout_keep_alive"] == 120


@pytest.mark.parametrize("settings_cls, prefix", [(CrmSettings, "CRM"), (EcmSettings, "ECM")])
def test_the_inbox_is_kept_at_least_as_long_as_the_outbox(monkeypatch, settings_cls, prefix):
    """A republished outbox row must still find the consumer's inbox mark."""
    defaults = settings_cls()
    assert (defaults.outbox_keep_days, defaults.inbox_keep_days) == (7, 45)
    monkeypatch.setenv(f"{prefix}_OUTBOX_KEEP_DAYS", "10")
    monkeypatch.setenv(f"{prefix}_INBOX_KEEP_DAYS", "9")
    with pytest.raises(ValidationError, match=f"{prefix}_INBOX_KEEP_DAYS"):
        settings_cls()
    monkeypatch.setenv(f"{prefix}_OUTBOX_KEEP_DAYS", "0")  # the outbox forever, the inbox not: refused
    with pytest.raises(ValidationError, match="forever"):
        settings_cls()
    monkeypatch.setenv(f"{prefix}_INBOX_KEEP_DAYS", "0")
    assert (settings_cls().outbox_keep_days, settings_cls().inbox_keep_days) == (0, 0)
    monkeypatch.setenv(f"{prefix}_OUTBOX_KEEP_DAYS", "10")  # the inbox forever: always safe
    assert settings_cls().outbox_keep_days == 10
    monkeypatch.setenv(f"{prefix}_INBOX_KEEP_DAYS", "10")
    assert settings_cls().inbox_keep_days == 10
    monkeypatch.setenv(f"{prefix}_OUTBOX_KEEP_DAYS", "-1")
    with pytest.raises(ValidationError):
        settings_cls()


@pytest.mark.parametrize("settings_cls", [CrmSettings, EcmSettings])
def test_the_business_time_zone_is_an_iana_name_checked_at_start(monkeypatch, settings_cls):
    assert settings_cls().business_timezone == "UTC"
    monkeypatch.setenv("BUSINESS_TIMEZONE", "Europe/Moscow")
    assert settings_cls().business_timezone == "Europe/Moscow"
    monkeypatch.setenv("BUSINESS_TIMEZONE", "Moscow")
    with pytest.raises(ValidationError, match="unknown time zone 'Moscow'"):
        settings_cls()


def test_the_companys_day_begins_at_its_own_midnight_across_daylight_saving():
    from datetime import date, datetime, timezone

    from infra import business_day

    try:
        business_day.use_zone("Europe/Moscow")
        assert business_day.today(datetime(2026, 12, 6, 21, 0, tzinfo=timezone.utc)) == date(2026, 12, 7)
        assert business_day.today(datetime(2026, 12, 6, 20, 59, tzinfo=timezone.utc)) == date(2026, 12, 6)
        start, end = business_day.day_bounds(date(2026, 12, 7))
        assert (start, end) == (datetime(2026, 12, 6, 21, tzinfo=timezone.utc),
                                datetime(2026, 12, 7, 21, tzinfo=timezone.utc))
        business_day.use_zone("Europe/Berlin")  # clocks go forward on 29 March 2026: a 23-hour day
        start, end = business_day.day_bounds(date(2026, 3, 29))
        assert (end - start).total_seconds() == 23 * 3600
        business_day.use_zone("Europe/Moscow")
        noon_utc = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)
        assert business_day.local_text(noon_utc) == "2026-12-07 15:00"
        assert business_day.local_text(noon_utc, "%H:%M %Z") == "15:00 MSK"
        assert business_day.local_text(noon_utc.replace(tzinfo=None)) == "2026-12-07 15:00"  # naive: UTC
        assert business_day.local_text(None) == ""
        assert business_day.from_wall_clock("2026-12-07T15:00") == noon_utc  # typed on the company's clock
        assert business_day.from_wall_clock("2026-12-07T15:00+00:00") == datetime(2026, 12, 7, 15, tzinfo=timezone.utc)
        with pytest.raises(ValueError):
            business_day.from_wall_clock("tomorrow")
        with pytest.raises(ValueError, match="unknown time zone"):
            business_day.use_zone("Nowhere/Special")
    finally:
        business_day.use_zone("UTC")
    assert business_day.today(datetime(2026, 12, 6, 23, 59, tzinfo=timezone.utc)) == date(2026, 12, 6)
