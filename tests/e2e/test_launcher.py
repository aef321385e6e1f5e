"""`make run`'s launcher as a user runs it: everything comes up on the embedded defaults
(SQLite, local broker) with the ports given, demo users are written, and Ctrl-C stops
every process it started."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import httpx

from deploy.broker import free_port
from deploy.local_run import ROOT
from tests.support.polling import wait_until


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_the_launcher_starts_everything_and_ctrl_c_stops_everything(tmp_path):
    ports = {name: free_port() for name in ("CRM_PORT", "ECM_PORT", "BRIDGE_WEB_PORT", "BROKER_PORT")}
    env = {**os.environ, "VAR_DIR": str(tmp_path / "var"), "PYTHONPATH": str(ROOT),
           **{k: str(v) for k, v in ports.items()}}
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
    launcher = subprocess.Popen([sys.executable, "-m", "deploy.local_run"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def collect():
        for line in launcher.stdout:  # line by line, so the test sees output as it comes
            lines.append(line)

    reader = threading.Thread(target=collect, daemon=True)
    reader.start()
    try:
        # The launcher says it is ready only once every part answers its health check.
        wait_until(lambda: any("Press Ctrl-C to stop everything." in line for line in lines), timeout=120,
                   message="the launcher reports the system running")
        assert all(listening(p) for p in ports.values())
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{ports['BRIDGE_WEB_PORT']}/health").status_code == 200,
                   timeout=60, message="bridge healthy")
        users = json.loads((tmp_path / "var" / "demo-users.json").read_text())
        assert {"sales", "legal", "finance", "director", "steward", "auditor", "admin"} <= {u["role"] for u in users}
        assert (tmp_path / "var" / "crm.db").exists() and (tmp_path / "var" / "ecm.db").exists()
    finally:
        launcher.send_signal(signal.SIGINT)
        launcher.wait(timeout=60)
        reader.join(timeout=10)
    output = "".join(lines)
    assert launcher.returncode == 0, output
    assert f"CRM API      http://127.0.0.1:{ports['CRM_PORT']}" in output
    assert "all processes stopped." in output
    assert not any(listening(p) for p in ports.values())
