"""Runs the whole system on one machine: the local broker (unless
KAFKA_BOOTSTRAP_SERVERS names a cluster), the CRM, the ECM and the bridge as separate
processes, with SQLite files under var/ by default. `make run` calls this; the
end-to-end tests start the system through the same class."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import Field
from pydantic_settings import BaseSettings

from deploy.broker import free_port, start_broker
from deploy.demo_users import ensure_demo_users, token_of
from deploy.processes import start_child, stop_child

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SESSION_TIMEOUT_MS = 6_000  # consumers' session timeout on the local broker (env())


class LauncherSettings(BaseSettings):
    var_dir: Path = Field(ROOT / "var", validation_alias="VAR_DIR")
    crm_port: int = Field(8001, validation_alias="CRM_PORT")
    ecm_port: int = Field(8002, validation_alias="ECM_PORT")
    bridge_web_port: int = Field(8003, validation_alias="BRIDGE_WEB_PORT")
    broker_port: int | None = Field(None, validation_alias="BROKER_PORT")
    kafka_bootstrap_servers: str | None = Field(None, validation_alias="KAFKA_BOOTSTRAP_SERVERS")
    crm_database_url: str | None = Field(None, validation_alias="CRM_DATABASE_URL")
    ecm_database_url: str | None = Field(None, validation_alias="ECM_DATABASE_URL")


@dataclass
class LocalSystem:
    settings: LauncherSettings
    log_dir: Path | None = None  # None: children write to this terminal
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    bootstrap_servers: str = ""
    users: list[dict] = field(default_factory=list)

    @property
    def var(self) -> Path:
        return self.settings.var_dir

    @property
    def crm_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.crm_port}"

    @property
    def ecm_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.ecm_port}"

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.bridge_web_port}"

    def _log(self, name: str) -> Path | None:
        return self.log_dir / f"{name}.log" if self.log_dir else None

    def env(self) -> dict[str, str]:
        s, var = self.settings, self.var
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "CRM_PORT": str(s.crm_port),
            "ECM_PORT": str(s.ecm_port),
            "CRM_DATABASE_URL": s.crm_database_url or f"sqlite+aiosqlite:///{var / 'crm.db'}",
            "ECM_DATABASE_URL": s.ecm_database_url or f"sqlite+aiosqlite:///{var / 'ecm.db'}",
            "CRM_FILES_DIR": str(var / "crm-files"),
            "CRM_IMPORTS_DIR": str(var / "crm-imports"),
            "ECM_CONTENT_DIR": str(var / "ecm-content"),
            "ECM_IMPORTS_DIR": str(var / "ecm-imports"),
            "CRM_URL": self.crm_url,
            "ECM_URL": self.ecm_url,
            "BRIDGE_WEB_PORT": str(s.bridge_web_port),
            "BRIDGE_DATA_DIR": str(var / "bridge"),
        }
        if self.users:
            env["CRM_INTEGRATION_TOKEN"] = env["BRIDGE_CRM_TOKEN"] = token_of(self.users, "crm-integration")
            env["ECM_INTEGRATION_TOKEN"] = env["BRIDGE_ECM_TOKEN"] = token_of(self.users, "ecm-integration")
        if "broker" in self.processes:
            # Tansu holds a joining consumer for half its session timeout: 3 s instead of 5
            # for every start and rebalance. 6 s is also the least Kafka accepts by default.
            env.setdefault("KAFKA_SESSION_TIMEOUT_MS", str(LOCAL_SESSION_TIMEOUT_MS))
        env.update(self.extra_env)
        return env

    def _python(self, *args: str) -> list[str]:
        return [sys.executable, *args]

    def prepare(self) -> None:
        """Broker, migrations, demo users and demo data."""
        self.var.mkdir(parents=True, exist_ok=True)
        if self.settings.kafka_bootstrap_servers:
            self.bootstrap_servers = self.settings.kafka_bootstrap_servers
        else:
            port = free_port(self.settings.broker_port or 9092)
            self.processes["broker"] = start_broker(port, self._log("broker"))
            self.bootstrap_servers = f"127.0.0.1:{port}"
        users_file = self.var / "demo-users.json"
        self.users = ensure_demo_users(users_file)
        # Each service's own database, migrated and seeded by one process of that service
        # (most of each process's ~1.5 s is Python importing the service), the two side by side.
        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(lambda service: self._run(self._python(
                "-m", service, "seed-demo", "--migrate", "--users-file", str(users_file))),
                ("crm_service", "ecm_service")))

    def _run(self, args: list[str]) -> None:
        subprocess.run(args, env=self.env(), cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL if self.log_dir else None)

    COMMANDS = {
        "crm": ("-m", "crm_service", "serve"),
        "ecm": ("-m", "ecm_service", "serve"),
        "bridge": ("-m", "sync_bridge"),
    }

    def start_process(self, name: str) -> None:
        self.processes[name] = start_child(self._python(*self.COMMANDS[name]), env=self.env(),
                                           log_file=self._log(name), cwd=ROOT)

    def start_replica(self, kind: str, name: str, port: int) -> str:
        """Another process of `kind` (crm, ecm, bridge) on `port`, sharing the first one's
        database, directories and consumer group, as replicas do; returns its URL."""
        own = {"crm": {"CRM_PORT": str(port)}, "ecm": {"ECM_PORT": str(port)},
               "bridge": {"BRIDGE_WEB_PORT": str(port), "BRIDGE_DATA_DIR": str(self.var / name)}}[kind]
        env = {**self.env(), **own}
        self.processes[name] = start_child(self._python(*self.COMMANDS[kind]), env=env,
                                           log_file=self._log(name), cwd=ROOT)
        return f"http://127.0.0.1:{port}"

    def start(self, timeout: float = 60.0) -> None:
        self.prepare()
        for name in ("crm", "ecm", "bridge"):
            self.start_process(name)
        self.wait_healthy(timeout)

    def wait_healthy(self, timeout: float = 60.0, names=("crm", "ecm", "bridge")) -> None:
        urls = {"crm": self.crm_url, "ecm": self.ecm_url, "bridge": self.bridge_url}
        deadline = time.monotonic() + timeout
        for name in names:
            while True:
                self._check_alive(name)
                try:
                    if httpx.get(f"{urls[name]}/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{name} not healthy after {timeout}s")
                time.sleep(0.2)

    def _check_alive(self, name: str) -> None:
        code = self.processes[name].poll()
        if code is not None:
            raise RuntimeError(f"{name} exited with code {code}" + (f"; see {self._log(name)}" if self.log_dir else ""))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        process = self.processes[name]
        process.send_signal(sig)
        process.wait(15)

    def stop(self) -> None:
        # Bridge workers first, then the services and their replicas, the broker last.
        rank = {"bridge": 0, "crm": 1, "ecm": 1, "broker": 2}
        for name in sorted(self.processes, key=lambda n: rank.get(n.split("-")[0], 1)):
            stop_child(self.processes.pop(name))

    def describe(self) -> str:
        return "\n".join([
            "",
            "The CRM-ECM bridge is running (development mode).",
            f"  CRM API      {self.crm_url}   (OpenAPI docs: {self.crm_url}/docs)",
            f"  ECM API      {self.ecm_url}   (OpenAPI docs: {self.ecm_url}/docs)",
            f"  Bridge       {self.bridge_url}/health",
            f"  Kafka        {self.bootstrap_servers}" + (" (local Tansu broker, memory storage)"
                                                          if "broker" in self.processes else ""),
            f"  Demo users and their API tokens: {self.var / 'demo-users.json'}",
            "  Walk-through: README.md, section 'Try the journey by hand'.",
            "Press Ctrl-C to stop everything.",
            "",
        ])


def main() -> int:
    system = LocalSystem(LauncherSettings())

    def _terminate(signum, _frame):
        raise KeyboardInterrupt

    # SIGINT explicitly too: a launcher started in the background of a script inherits
    # SIGINT ignored, and Ctrl-C / `kill -INT` must still stop everything.
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    code = 0
    try:
        system.start()
        print(system.describe(), flush=True)
        while True:
            for name in ("crm", "ecm", "bridge", "broker"):
                if name in system.processes and system.processes[name].poll() is not None:
                    print(f"{name} exited unexpectedly (code {system.processes[name].returncode}); stopping",
                          flush=True)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
    except (RuntimeError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"could not start: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        system.stop()
        print("all processes stopped.", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
