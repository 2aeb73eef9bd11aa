"""deploy/k8s/receiver.yaml validated offline: schema, same image as the code location, probes, scaling, edge limits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from mailglass_pipeline.ingest.tenants import parse_secrets

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
K8S_VERSION = "1.30.0"


def docs(name: str) -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for doc in yaml.safe_load_all((K8S / name).read_text()):
        if doc:
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


RECEIVER = docs("receiver.yaml")


@pytest.mark.parametrize("key", list(RECEIVER), ids=[f"{kind}/{name}" for kind, name in RECEIVER])
def test_receiver_manifests_validate(key: tuple[str, str]) -> None:
    kubernetes_validate.validate(RECEIVER[key], K8S_VERSION, strict=True)


def test_receiver_runs_mailglass_serve_from_the_code_location_image() -> None:
    deployment = RECEIVER[("Deployment", "mailglass-receiver")]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    code = docs("code-server.yaml")[("Deployment", "mailglass-code")]
    assert container["image"] == code["spec"]["template"]["spec"]["containers"][0]["image"]
    args = container["args"]
    assert args[:2] == ["mailglass", "serve"] and args[args.index("--host") + 1] == "0.0.0.0"
    port = int(args[args.index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    # Readiness and start-up on /healthz; liveness must not restart pods during a database outage.
    for probe in ("readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert "httpGet" not in container["livenessProbe"]
    refs = [source["secretRef"]["name"] for source in container["envFrom"]]
    # Its own least-privilege role (`mailglass grants --for receiver`), neither the owner nor the reconciler.
    assert "mailglass-receiver-db" in refs and not {"mailglass-app-db", "mailglass-app-db-owner"} & set(refs)
    migrate = docs("migrate-job.yaml")[("Job", "mailglass-migrate")]
    assert "mailglass grants --for receiver" in " ".join(migrate["spec"]["template"]["spec"]["containers"][0]["args"])
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["MAILGLASS_WEBHOOK_SECRETS"].startswith("/etc/mailglass/")
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")


def test_receiver_scales_and_the_edge_bounds_bodies() -> None:
    service = RECEIVER[("Service", "mailglass-receiver")]
    deployment = RECEIVER[("Deployment", "mailglass-receiver")]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    hpa = RECEIVER[("HorizontalPodAutoscaler", "mailglass-receiver")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mailglass-receiver" and hpa["spec"]["minReplicas"] >= 2
    ingress = RECEIVER[("Ingress", "mailglass-receiver")]
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "1m"
    assert notes["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "on"
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/postmark", "/sendgrid", "/mailgun", "/ses", "/resend"}  # no public /metrics


def test_example_secrets_file_parses() -> None:
    secrets = docs("secrets.example.yaml")
    toml_text = secrets[("Secret", "mailglass-webhook-secrets")]["stringData"]["webhook-secrets.toml"]
    parsed = parse_secrets(toml_text, "secrets.example.yaml")
    assert set(parsed["acme"]) == {"postmark", "ses"}
    assert "MAILGLASS_SES_TOPIC_ARNS" in secrets[("Secret", "mailglass-webhook-globals")]["stringData"]
