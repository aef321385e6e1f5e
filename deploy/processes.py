"""Starting and stopping child processes so none outlives the launcher."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from pathlib import Path

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Note: PR_SET_PDEATHSIG fires when the *thread* that started the child ends, not the
    # process; start children from a thread that lives as long as they should.
    os.setpgrp()  # Ctrl-C reaches the launcher only; it stops children in order
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


def start_child(args: list[str], *, env: dict | None, log_file: Path | None, cwd: Path | None = None):
    out = None
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        out = open(log_file, "ab")
    try:
        return subprocess.Popen(
            [str(a) for a in args], env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT if out else None,
            preexec_fn=_die_with_parent,
        )
    finally:
        if out is not None:
            out.close()


def stop_child(process: subprocess.Popen, timeout: float = 10.0) -> int | None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
