"""`python -m ecm_service bulk-load` as the accounting team runs it: a real process on a
migrated SQLite registry, to its end, and stopped with SIGTERM (or Ctrl-C) mid-load."""

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

HEADER = "Код;Наименование;ИНН;КПП;ОГРН\n"


@pytest.fixture
def registry(tmp_path):
    env = {**os.environ, "ECM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'ecm.db'}",
           "ECM_IMPORTS_DIR": str(tmp_path / "imports"), "LOG_JSON": "true"}
    subprocess.run([sys.executable, "-m", "ecm_service", "migrate"], env=env, check=True, capture_output=True)
    return env, tmp_path / "ecm.db"


def _cli(env, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ecm_service", "bulk-load", *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _loads(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select status, rows_done, error, report_path from bulk_loads").fetchall()


def test_a_load_from_the_command_line_reports_every_row(registry, tmp_path):
    env, db = registry
    export = tmp_path / "export.csv"
    export.write_text(HEADER + "1;ООО «Ромашка»;7736050003;773601001;1027700070518\n2;;;;\n", encoding="utf-8")
    cli = _cli(env, export, "--system", "1c", "--report", tmp_path / "report.csv")
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 0, err
    assert ": 2 rows (created 1, error 1); report: " in out
    with open(tmp_path / "report.csv", encoding="utf-8") as handle:
        assert [row["outcome"] for row in csv.DictReader(handle)] == ["created", "error"]
    assert _loads(db) == [("done", 2, None, str(tmp_path / "report.csv"))]


def test_a_load_stopped_from_the_command_line_says_where_it_stopped(registry, tmp_path):
    env, db = registry
    export = tmp_path / "export.csv"
    export.write_text(HEADER + "".join(f"{n};Организация {n};;;\n" for n in range(60_000)), encoding="utf-8")
    cli = _cli(env, export, "--system", "1c", "--report", tmp_path / "report.csv")
    deadline = time.monotonic() + 120
    while not (loads := _loads(db)) or loads[0][1] == 0:  # its first chunk is in
        assert cli.poll() is None and time.monotonic() < deadline, cli.communicate()
        time.sleep(0.05)
    cli.send_signal(signal.SIGTERM)
    out, err = cli.communicate(timeout=120)
    assert cli.returncode == 130, (out, err)
    [(status, rows_done, error, report)] = _loads(db)
    assert status == "failed" and 0 < rows_done < 60_000
    assert error.startswith(f"interrupted: the bulk-load command stopped after {rows_done} rows"), error
    assert f"interrupted after {rows_done} rows" in err
    with open(report, encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == rows_done
