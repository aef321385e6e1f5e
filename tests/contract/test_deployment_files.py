"""The production deployment files cannot be run here (no Docker engine, no cluster),
so they are checked statically: they parse, and their wiring agrees with the code —
bootstrap servers, databases, topics, tokens, probes, metrics."""

import json
import re
from pathlib import Path

import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from crm_service.config import CrmSettings
from ecm_service.config import EcmSettings
from ecm_service.service_layer import metrics as ecm_metrics
from infra import metrics
from schemas.topics import BRIDGE_CONTROL, DATA_TOPICS, provisioning
from sync_bridge.config import BridgeSettings
from tests.support import alerts

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
COMPOSE = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
BROKERS = ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]
STRONG = "Zq8vN3mK7pR2xW5tY9bC4dF6gH1jL0sA"
README = (DEPLOY.parent / "README.md").read_text()
PROMETHEUS = yaml.safe_load(alerts.CONFIG_FILE.read_text())
# The code's metrics by name as prometheus_client keeps it (a counter's without `_total`).
METRICS = {m._name: m for module in (metrics, ecm_metrics) for m in vars(module).values()
           if isinstance(m, MetricWrapperBase)}


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def substitute(env: dict) -> dict:
    """Compose interpolation with test values for the operator-supplied secrets."""
    return {k: re.sub(r"\$\{[A-Z_]+(:\?[^}]*)?\}", STRONG, str(v)) for k, v in env.items()}


def test_compose_runs_three_kraft_brokers_that_know_each_other():
    for i in (1, 2, 3):
        env = SERVICES[f"kafka-{i}"]["environment"]
        assert env["KAFKA_NODE_ID"] == i and env["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://kafka-{i}:9092"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"  # topics come from the provisioning script
        assert SERVICES[f"kafka-{i}"]["image"].startswith("apache/kafka:")


@pytest.mark.parametrize("name, settings_cls", [("crm", CrmSettings), ("ecm", EcmSettings),
                                                ("bridge", BridgeSettings)])
def test_each_app_names_the_cluster_and_starts_with_its_compose_environment(monkeypatch, name, settings_cls):
    env = substitute(SERVICES[name]["environment"])
    assert env["KAFKA_BOOTSTRAP_SERVERS"].split(",") == BROKERS
    assert env["APP_ENV"] == "production"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = settings_cls()  # fails fast, as the container would, on a missing or unknown value
    assert settings.kafka_bootstrap_servers == ",".join(BROKERS) and not settings.is_development
    assert (settings.topic_partitions, settings.topic_replication) == (12, 3)  # as the provisioning script
    assert settings.host == "0.0.0.0"


def test_services_use_their_own_database_on_the_compose_postgres():
    init = (DEPLOY / "postgres" / "init.sql").read_text()
    for name in ("crm", "ecm"):
        url = SERVICES[name]["environment"][f"{name.upper()}_DATABASE_URL"]
        assert url.startswith(f"postgresql+asyncpg://{name}:") and url.endswith(f"@postgres:5432/{name}")
        assert f"CREATE DATABASE {name} OWNER {name};" in init
        assert SERVICES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_the_bridge_scales_out_and_reaches_both_apis_with_service_tokens():
    bridge = SERVICES["bridge"]
    assert bridge["deploy"]["replicas"] >= 2
    env = bridge["environment"]
    assert env["CRM_URL"] == "http://crm:8001" and env["ECM_URL"] == "http://ecm:8002"
    assert env["BRIDGE_CRM_TOKEN"] == SERVICES["crm"]["environment"]["CRM_INTEGRATION_TOKEN"]
    assert env["BRIDGE_ECM_TOKEN"] == SERVICES["ecm"]["environment"]["ECM_INTEGRATION_TOKEN"]


def test_the_provisioning_script_creates_every_topic_the_code_uses():
    script = (DEPLOY / "kafka" / "create-topics.sh").read_text()
    loop_topics = re.search(r"for topic in ([^;]+);", script).group(1).split()
    assert set(loop_topics) == set(DATA_TOPICS)
    created = set(loop_topics) | {f"{t}.dlq" for t in loop_topics} | {BRIDGE_CONTROL}
    assert created == set(provisioning(1))
    assert re.search(rf"create {re.escape(BRIDGE_CONTROL)} 1 --config cleanup.policy=compact", script)
    assert "--replication-factor" in script and "min.insync.replicas=2" in script
    assert SERVICES["kafka-topics"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"].split(",") == BROKERS
    for name in ("crm", "ecm", "bridge"):
        assert SERVICES[name]["depends_on"]["kafka-topics"]["condition"] == "service_completed_successfully"


def test_prometheus_scrapes_every_process_and_the_dashboard_uses_real_metrics():
    jobs = {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    assert jobs == {"crm", "ecm", "bridge"}
    known = set(METRICS)
    dashboard = json.loads((DEPLOY / "grafana" / "bridge-dashboard.json").read_text())
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= {re.sub(r"_(bucket|count|sum|total)$", "", n)
                     for n in re.findall(r"\b(?:bridge|ecm|db|messaging)_[a-z_]+", target["expr"])}
    assert used and used <= {re.sub(r"_total$", "", n) for n in known}, used - known
    assert {"bridge_consumer_lag", "bridge_outbox_backlog", "ecm_approvals", "messaging_rows_pruned"} <= used


def metric_of(series: str):
    """The code's metric a series name belongs to (`x_total`, `x_bucket`, ... of `x`), or None."""
    for suffix in ("_total", "_bucket", "_count", "_sum", ""):
        if series.endswith(suffix) and (base := series.removesuffix(suffix)) in METRICS:
            return METRICS[base]
    return None


def test_alerting_rules_are_loaded_parse_and_name_real_metrics_labels_jobs_and_readme_sections():
    assert PROMETHEUS["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert "../prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in SERVICES["prometheus"]["volumes"]
    jobs = {job["job_name"] for job in PROMETHEUS["scrape_configs"]}
    headings = set(re.findall(r"^#+ (.+)$", README, re.M))
    rules = alerts.rule_list()
    assert len({r["alert"] for r in rules}) == len(rules) >= 7
    for rule in rules:
        name, notes = rule["alert"], rule["annotations"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert {"summary", "description", "runbook"} <= notes.keys(), name
        sections, _, bullet = notes["runbook"].removeprefix("README: ").partition(" (")
        assert all(section in headings for section in sections.split(" -> ")), (name, sections)
        assert not bullet or f"**{bullet.removesuffix(')')}**" in README, (name, bullet)
        carried = set()  # the labels the selected series have
        for selector in alerts.selectors(rule["expr"]):
            if selector.name == alerts.MADE_BY_PROMETHEUS:
                assert {m.name for m in selector.matchers.matchers} == {"job"}, name
                assert any(alerts.matches(selector, "up", {"job": job}) for job in jobs), (name, "no such job")
                carried |= {"job", "instance"}
                continue
            metric = metric_of(selector.name)
            assert metric is not None, (name, selector.name)
            assert {m.name for m in selector.matchers.matchers} <= set(metric._labelnames), (name, selector)
            carried |= set(metric._labelnames) | {"job", "instance"}
        groupings = [set(a.modifier.labels) for a in alerts.nodes(rule["expr"], promql_parser.AggregateExpr)
                     if a.modifier is not None and a.modifier.type == promql_parser.AggModifierType.By]
        assert all(grouping <= carried for grouping in groupings), (name, groupings, carried)
        # The alert carries the labels of its outermost (first, left-hand) aggregation, if any.
        result = groupings[0] if groupings else carried
        templated = set(re.findall(r"\$labels\.(\w+)", notes["summary"] + notes["description"]))
        assert templated <= result, (name, templated - result)
    down = alerts.selectors(alerts.rule("ProcessDown")["expr"])
    assert {job for job in jobs if any(alerts.matches(s, "up", {"job": job}) for s in down)} == jobs, \
        "a scrape job whose processes going down would go unnoticed"


def test_kubernetes_manifests_wire_the_same_way():
    docs = k8s_documents()
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    config = by_kind["ConfigMap"]["bridge-config"]["data"]
    assert config["APP_ENV"] == "production" and config["KAFKA_BOOTSTRAP_SERVERS"]
    # Behind the ingress that ends TLS: its forwarded scheme trusted (the cookie is Secure).
    assert config["FORWARDED_ALLOW_IPS"] == "*" and COMPOSE["x-app-env"]["FORWARDED_ALLOW_IPS"] == "*"
    secret_keys = set(by_kind["Secret"]["bridge-secrets"]["stringData"])
    deployments = by_kind["Deployment"]
    assert set(deployments) == {"crm", "ecm", "bridge"}
    assert deployments["bridge"]["spec"]["replicas"] >= 2
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod.get("initContainers", []) + pod["containers"]:
            assert {"configMapRef": {"name": "bridge-config"}} in container["envFrom"]
            for var in container.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["name"] == "bridge-secrets" and ref["key"] in secret_keys, var
        main = pod["containers"][0]
        probe = main["readinessProbe"]["httpGet"]["path"]
        assert probe == ("/health" if name == "bridge" else "/ready")
        # Liveness asks only whether the process answers: an outage of the database or
        # the broker must not get every replica restarted.
        assert main["livenessProbe"]["httpGet"]["path"] == ("/health" if name == "bridge" else "/live")
        if name != "bridge":
            assert pod["initContainers"][0]["command"][-1] == "migrate"
            assert by_kind["Service"][name]["spec"]["ports"][0]["port"] == main["ports"][0]["containerPort"]
    job = by_kind["Job"]["kafka-topics"]["spec"]["template"]["spec"]
    assert job["volumes"][0]["configMap"]["name"] == "kafka-topics-script"
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert kustomization["configMapGenerator"][0]["files"] == ["kafka/create-topics.sh"]
    for resource in kustomization["resources"]:
        assert (DEPLOY / resource).exists()
    assert "k8s/secret.example.yaml" not in kustomization["resources"]


def data_dirs(settings_cls) -> list[str]:
    """The environment variables of a service's directories that hold data it must keep
    (its settings' paths under var/, e.g. files, content, imports): not its packaged files."""
    prefix = settings_cls.model_config["env_prefix"]
    return [f"{prefix}{name.upper()}" for name, field in settings_cls.model_fields.items()
            if isinstance(field.default, Path) and field.default.parts[:1] == ("var",)]


@pytest.mark.parametrize("name, settings_cls", [("crm", CrmSettings), ("ecm", EcmSettings)])
def test_every_data_directory_is_on_a_volume_the_replicas_share(name, settings_cls):
    """A directory left at its default is inside the container: lost on a restart, and on
    Kubernetes, where the service runs several replicas behind one Service, a file one
    pod wrote (an import's upload, its report, a stored document) is missing on the pod
    the next request reaches."""
    wanted = data_dirs(settings_cls)
    assert f"{name.upper()}_IMPORTS_DIR" in wanted and len(wanted) >= 2

    service = SERVICES[name]
    named = {mount.split(":")[1]: mount.split(":")[0] for mount in service["volumes"]}
    for var in wanted:
        path = service["environment"].get(var)
        assert path and path in named and named[path] in COMPOSE["volumes"], (name, var, "compose")

    docs = k8s_documents()
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {var["name"]: var.get("value") for var in container["env"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    paths = []
    for var in wanted:
        path = env.get(var)
        assert path in mounts, (name, var, "kubernetes: not on a mounted volume")
        claim = volumes[mounts[path]["name"]]["persistentVolumeClaim"]["claimName"]
        if deployment["spec"]["replicas"] > 1:
            assert "ReadWriteMany" in claims[claim]["spec"]["accessModes"], (name, var, claim)
        paths.append((claim, mounts[path].get("subPath", "")))
    assert len(set(paths)) == len(paths), f"two data directories of {name} share one place: {paths}"


def test_the_image_user_can_write_every_data_directory():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    uid = re.search(r"useradd --uid (\d+) --gid (\d+) app", dockerfile)
    assert uid and uid.group(1) == uid.group(2) and "USER app" in dockerfile
    created = set(re.search(r"mkdir -p ([^&\n]+)", dockerfile).group(1).replace("\\", " ").split())
    assert "chown -R app:app /data" in dockerfile
    for name in ("crm", "ecm"):
        mounted = {mount.split(":")[1] for mount in SERVICES[name]["volumes"]}
        assert mounted <= created, (name, mounted - created)  # a new named volume takes the image's owner
    for doc in k8s_documents():
        if doc["kind"] == "Deployment":
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsUser"] == context["fsGroup"] == int(uid.group(1)), doc["metadata"]["name"]


def _seconds(value) -> float:
    """A compose duration ("45s", "1m30s") or a number of seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert parts and value, f"unreadable duration {value!r}"
    return int(parts[1] or 0) * 60 + int(parts[2] or 0)


@pytest.mark.parametrize("name", ["crm", "ecm"])
def test_a_stopped_service_gets_the_signal_and_the_time_to_end_its_jobs(name):
    """SIGTERM must reach the server process, not a shell that ignores it (compose's
    `sh -c "migrate && serve"` kept `sh` as the parent, so compose killed the service 10 s
    later without a graceful stop); and the orchestrator must wait longer than the
    service waits for its imports and bulk loads before it kills it."""
    from infra.runtime import JOBS_STOP_SECONDS

    command = SERVICES[name]["command"]
    if command[:2] == ["sh", "-c"]:
        *_, last = command[2].split("&&")
        assert last.strip().startswith(f"exec python -m {name}_service serve"), command
    uvicorn_graceful = 5  # infra.service_cli: timeout_graceful_shutdown
    assert _seconds(SERVICES[name]["stop_grace_period"]) > JOBS_STOP_SECONDS + uvicorn_graceful
    pod = next(d for d in k8s_documents() if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
    assert pod["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > JOBS_STOP_SECONDS + uvicorn_graceful
