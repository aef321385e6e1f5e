"""The alerting rules evaluated by Prometheus's own promtool (Debian's `prometheus` package,
installed by `make test`): `promtool check rules` on the file as deployed, and `promtool
test rules` with alert_rules.test.yml (synthetic series, minute by minute: when each alert
fires, and when it must not). promtool compares annotations too, so the unit tests run on a
copy of the rules without them; the annotations are checked by `check rules` (templates)
and test_deployment_files.py (the labels they use, the README sections they name)."""

import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support import alerts

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
UNIT_TESTS = Path(__file__).with_name("alert_rules.test.yml")


def promtool(*args: str, cwd: Path | None = None) -> str:
    assert Path(PROMTOOL).exists(), "promtool is missing: `make test` installs it (tools/ensure-debian-tool.sh)"
    result = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules_and_the_configuration_that_loads_them(tmp_path):
    assert f"SUCCESS: {len(alerts.rule_list())} rules found" in promtool("check", "rules", str(alerts.RULES_FILE))
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(alerts.deployed_config()))
    promtool("check", "config", str(tmp_path / "prometheus.yml"))


def test_every_alert_fires_when_it_should_and_not_before(tmp_path):
    rules = yaml.safe_load(alerts.RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    assert "SUCCESS" in promtool("test", "rules", UNIT_TESTS.name, cwd=tmp_path)

    cases = [case for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    fired = {case["alertname"] for case in cases if case["exp_alerts"]}
    quiet = {case["alertname"] for case in cases if not case["exp_alerts"]}
    every = {rule["alert"] for rule in alerts.rule_list()}
    assert fired == every, f"alerts no test sees firing: {every - fired}"
    assert quiet == every, f"alerts no test sees holding back: {every - quiet}"
