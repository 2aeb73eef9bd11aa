"""deploy/ validated offline: Kubernetes schemas, Dagster's instance schema, limits, secrets.

- Every manifest in deploy/k8s validates strictly against the Kubernetes 1.30 JSON schemas that
  ``kubernetes-validate`` ships (no cluster, no network).
- deploy/dagster.yaml loads through Dagster's own instance-config validation
  (``dagster_instance_config``); the run launcher's and run coordinator's class configs are validated
  against their classes' ``config_type()`` (K8sRunLauncher only when dagster-k8s is importable: it is an
  image-only dependency, so the test says so when it skips that part).
- The effective concurrency limits (``DagsterInstance.get_concurrency_config()``) of deploy/dagster.yaml,
  of the Helm values (rendered the way the chart's ``_run-coordinator.tpl`` renders them) and of the
  repository's dagster.yaml are equal, so they cannot drift.
- The ConfigMaps carry exactly deploy/dagster.yaml and deploy/workspace.yaml.
- No credential anywhere in deploy/ (only ``REPLACE_ME`` placeholders), and the CLI masks passwords.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dagster import DagsterInstance

from tests.dagster_private import (
    class_from_code_pointer,
    dagster_instance_config,
    validate_config,
)
from tests.processes import mailglass

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"
FAKE_STORAGE_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                found.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


MANIFESTS = _manifests()


def test_manifest_set_is_complete() -> None:
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in MANIFESTS}
    for expected in [
        ("Deployment", "mailglass-code"),
        ("Service", "mailglass-code"),
        ("Deployment", "mailglass-webserver"),
        ("Deployment", "mailglass-daemon"),
        ("Job", "mailglass-migrate"),
        ("ConfigMap", "mailglass-dagster-instance"),
        ("ConfigMap", "mailglass-dagster-workspace"),
        ("ServiceAccount", "mailglass-dagster"),
        ("Role", "mailglass-dagster-run-launcher"),
        ("RoleBinding", "mailglass-dagster-run-launcher"),
        ("Secret", "mailglass-app-db"),
        ("Secret", "mailglass-app-db-owner"),
        ("Secret", "mailglass-dagster-storage"),
    ]:
        assert expected in kinds


@pytest.mark.parametrize(("name", "doc"), MANIFESTS, ids=[name for name, _ in MANIFESTS])
def test_manifest_validates_against_kubernetes_schema(name: str, doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_invalid_manifest_is_refused() -> None:
    # The validator is not a rubber stamp: an unknown field under strict mode fails.
    _, deployment = next((n, d) for n, d in MANIFESTS if d["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_only_the_migration_job_uses_the_owner_secret() -> None:
    for name, doc in MANIFESTS:
        text = yaml.safe_dump(doc)
        if doc["kind"] == "Job":
            assert "mailglass-app-db-owner" in text and "mailglass grants" in text and "mailglass migrate" in text
        elif doc["kind"] != "Secret":
            assert "mailglass-app-db-owner" not in text, name
    code = next(d for _, d in MANIFESTS if d["kind"] == "Deployment" and d["metadata"]["name"] == "mailglass-code")
    refs = [e["secretRef"]["name"] for e in code["spec"]["template"]["spec"]["containers"][0]["envFrom"]]
    assert "mailglass-app-db" in refs
    launcher = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]["config"]
    assert "mailglass-app-db" in launcher["env_secrets"] and "mailglass-app-db-owner" not in launcher["env_secrets"]


def test_configmaps_carry_the_deploy_files() -> None:
    maps = {d["metadata"]["name"]: d["data"] for _, d in MANIFESTS if d["kind"] == "ConfigMap"}
    assert maps["mailglass-dagster-instance"]["dagster.yaml"] == (DEPLOY / "dagster.yaml").read_text()
    assert maps["mailglass-dagster-workspace"]["workspace.yaml"] == (DEPLOY / "workspace.yaml").read_text()


def test_workspace_points_at_the_code_server() -> None:
    [entry] = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())["load_from"]
    server = entry["grpc_server"]
    service = next(d for _, d in MANIFESTS if d["kind"] == "Service" and d["metadata"]["name"] == server["host"])
    assert server["port"] in [p["port"] for p in service["spec"]["ports"]]
    assert server["location_name"] == "mailglass_pipeline"


def _class_config_errors(section: dict[str, Any]) -> list[str]:
    cls = class_from_code_pointer(section["module"], section["class"])
    result = validate_config(cls.config_type(), section.get("config") or {})
    return [str(e) for e in result.errors or []]


def test_production_instance_config_loads_in_dagsters_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", FAKE_STORAGE_URL)
    config, _ = dagster_instance_config(str(DEPLOY), "dagster.yaml")
    assert set(config["storage"]) == {"postgres"}
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "MAILGLASS_DAGSTER_DATABASE_URL"}
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert _class_config_errors(config["run_coordinator"]) == []
    assert config["run_launcher"]["class"] == "K8sRunLauncher"


def test_k8s_run_launcher_config_is_valid_for_dagster_k8s() -> None:
    pytest.importorskip("dagster_k8s", reason="dagster-k8s is an image-only dependency (deploy/Dockerfile)")
    section = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_launcher"]
    assert _class_config_errors(section) == []
    bad = {**section, "config": {**section["config"], "env_secret": ["typo"]}}
    assert _class_config_errors(bad) != []


def _instance_from(config: dict[str, Any], home: Path) -> DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))


def local_variant(config: dict[str, Any]) -> dict[str, Any]:
    """deploy/dagster.yaml with the DefaultRunLauncher (no Kubernetes): what the topology test runs."""
    local = yaml.safe_load(yaml.safe_dump(config))
    local["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    local["run_monitoring"]["max_resume_run_attempts"] = 0  # the default launcher cannot resume runs
    return local


def helm_instance_fragment(values: dict[str, Any]) -> dict[str, Any]:
    """The run_coordinator and concurrency sections the chart renders from ``values``.

    Mirrors helm/dagster/templates/helpers/instance/_run-coordinator.tpl (1.13 line): camelCase values
    become the QueuedRunCoordinator's snake_case config; additionalInstanceConfig is merged verbatim.
    """
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] or {}
    coordinator: dict[str, Any] = {"module": "dagster.core.run_coordinator", "class": "QueuedRunCoordinator"}
    config = {
        snake: queued[camel]
        for camel, snake in [
            ("maxConcurrentRuns", "max_concurrent_runs"),
            ("tagConcurrencyLimits", "tag_concurrency_limits"),
        ]
        if queued.get(camel) not in (None, [])
    }
    if config:  # the template emits `config:` only when some value is set
        coordinator["config"] = config
    fragment: dict[str, Any] = {"run_coordinator": coordinator}
    fragment.update(values.get("additionalInstanceConfig") or {})
    return fragment


def test_limits_equal_the_repository_dagster_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILGLASS_DAGSTER_DATABASE_URL", FAKE_STORAGE_URL)
    repo = yaml.safe_load((REPO / "dagster.yaml").read_text())
    production = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    storage = {"storage": repo["storage"]}

    expected = _instance_from(repo, tmp_path / "repo").get_concurrency_config()
    got_production = _instance_from(local_variant(production), tmp_path / "prod").get_concurrency_config()
    got_helm = _instance_from({**storage, **helm_instance_fragment(values)}, tmp_path / "helm").get_concurrency_config()
    assert expected.run_queue_config is not None and expected.run_queue_config.tag_concurrency_limits
    assert got_production == expected
    assert got_helm == expected
    # Same text, too, so a reader of either file sees the same block.
    assert production["concurrency"] == repo["concurrency"]
    assert production["run_monitoring"]["max_runtime_seconds"] == repo["run_monitoring"]["max_runtime_seconds"]


def test_helm_values_use_this_image_and_the_secrets() -> None:
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "mailglass_pipeline.definitions", "-a", "defs"]
    assert {"name": "mailglass-app-db"} in deployment["envSecrets"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and "postgresqlPassword" not in values["postgresql"]
    assert values["global"]["postgresqlSecretName"]


# -- secrets -------------------------------------------------------------------------------------

CREDENTIAL_PATTERNS = [
    re.compile(
        r"postgres(?:ql)?(?:\+\w+)?://[^:/@\s]+:(?!REPLACE_ME@|<password>@)[^@\s]+@"
    ),  # URL with a real password
    re.compile(r"(?i)\bpassword\s*[:=]\s*(?!\s*$)(?!.*REPLACE_ME)['\"]?[^\s'\"<]{4,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"whsec_[A-Za-z0-9+/=]{8,}"),
]


def test_no_credentials_in_deploy() -> None:
    hits = []
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(p.search(line) for p in CREDENTIAL_PATTERNS):
                hits.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert hits == []
    # The patterns catch what they are for.
    assert CREDENTIAL_PATTERNS[0].search("postgresql://mailglass:s3cret@db:5432/m")
    assert not CREDENTIAL_PATTERNS[0].search("postgresql://mailglass:REPLACE_ME@db:5432/m")


def test_dockerfile_runs_as_non_root_with_health_check_and_no_secret() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert "HEALTHCHECK" in text and "grpc-health-check" in text
    assert '"dagster", "api", "grpc"' in text
    assert "dagster-k8s==0.29.27" in text
    assert not re.search(r"^(ENV|ARG)\s+\S*(PASSWORD|SECRET|DATABASE_URL)", text, re.M | re.I)


def test_cli_masks_passwords_in_printed_urls(database_url: str) -> None:
    from sqlalchemy.engine import make_url

    secret = "Sup3rSecretPw"
    url = make_url(database_url).set(password=secret).render_as_string(hide_password=False)
    # trust auth accepts any password here, so the command really connects and prints its database line.
    proc = mailglass("migrate", env={"MAILGLASS_DATABASE_URL": url})
    assert proc.returncode == 0, proc.stderr
    assert "***" in proc.stderr and secret not in proc.stderr + proc.stdout
