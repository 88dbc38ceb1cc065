"""docker-compose.yml against the settings code (there is no Docker engine here to run it)."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from latentsight import settings

yaml = pytest.importorskip("yaml")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _app_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items()
            if "latentsight" in " ".join(map(str, s.get("command", [])))}


def _published(service: dict) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def test_every_image_is_pinned(compose):
    for name, svc in compose["services"].items():
        image = svc.get("image")
        assert image or "build" in svc, f"{name} has neither image nor build"
        if image:
            repo, _, tag = image.rpartition(":")
            assert repo and tag and tag != "latest" and "/" not in tag, f"{name}: {image}"
            assert re.search(r"\d", tag), f"{name}: tag {tag!r} carries no version"


def test_services_the_settings_point_at_exist_with_their_ports(compose):
    apps = _app_services(compose)
    assert {"latentsight", "ingest"} <= set(apps)
    for env, (service, port) in settings.SERVICES.items():
        assert service in compose["services"], f"{env} points at missing service {service}"
        assert port in _published(compose["services"][service]) or service == "postgres"
        for name, app in apps.items():
            url = urlparse(app["environment"][env].replace("postgresql+psycopg", "postgresql"))
            assert (url.hostname, url.port) == (service, port), f"{name}: {env}"
            deps = app.get("depends_on", {})
            assert service in deps and deps[service]["condition"] == "service_healthy"


def test_app_environment_matches_the_settings(compose):
    for name, app in _app_services(compose).items():
        env = app["environment"]
        assert set(settings.COMPOSE_ENV) <= set(env), name
        assert env[settings.ENV_BACKEND] in settings.BACKENDS
        resolved = settings.Settings.resolve(
            home=env[settings.ENV_HOME], db_url=env[settings.ENV_DB_URL],
            backend=env[settings.ENV_BACKEND], milvus_uri=env[settings.ENV_MILVUS_URI])
        assert resolved.backend == "milvus" and resolved.milvus_uri.startswith("http://")
        assert resolved.db_url.startswith("postgresql+psycopg://")
        assert env[settings.ENV_HOME] in " ".join(app.get("volumes", []))


def test_dashboard_port_health_checks_and_named_volumes(compose):
    dash = compose["services"]["latentsight"]
    assert dash["command"][-2:] == ["--port", str(settings.DASHBOARD_PORT)]
    assert "0.0.0.0" in dash["command"] and settings.DASHBOARD_PORT in _published(dash)
    for name in ("etcd", "minio", "milvus", "postgres"):
        assert "healthcheck" in compose["services"][name], name
    named = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            assert src.startswith(".") or src in named, f"{name}: {vol}"
    milvus_env = compose["services"]["milvus"]["environment"]
    assert milvus_env["ETCD_ENDPOINTS"].split(":")[0] == "etcd"
    assert milvus_env["MINIO_ADDRESS"].split(":")[0] == "minio"


def test_dockerfile_runs_the_dashboard_on_the_settings_port():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM \S+:\d[\w.\-]*$", text, re.M)
    assert f'"--port", "{settings.DASHBOARD_PORT}"' in text
    assert f"EXPOSE {settings.DASHBOARD_PORT}" in text


def test_ray_head_and_worker_serve_the_apps_with_the_same_mounts(compose):
    """A head and one worker, from the image with the ray extra; the worker joins the head
    the apps' RAY_ADDRESS names; every Ray node sees the home and data where the apps do."""
    services = compose["services"]
    head, worker = services["ray-head"], services["ray-worker"]
    assert head["build"]["args"]["EXTRAS"] == "[ray]" and head["image"] == worker["image"]
    assert "--head" in head["command"] and "--port=6379" in head["command"]
    assert "--address=ray-head:6379" in worker["command"]
    assert worker["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "ray" in " ".join(head["healthcheck"]["test"])
    assert all(str(p).startswith("127.0.0.1:") for p in head.get("ports", []))  # runs jobs
    for name, svc in _app_services(compose).items():
        assert svc["environment"]["RAY_ADDRESS"] == "ray-head:6379", name
    scan = services["scan"]
    assert scan["image"] == head["image"] and "--engine" in scan["command"]
    assert scan["command"][scan["command"].index("--engine") + 1] == "ray"
    assert scan["depends_on"]["ray-head"]["condition"] == "service_healthy"
    for node in (head, worker):
        assert set(scan["volumes"]) <= set(node["volumes"])  # same paths on every node
        assert node["shm_size"]
    text = (ROOT / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in text and 'pip install ".${EXTRAS}"' in text
    extras = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^ray = \[\s*"ray\[data\]', extras, re.M)
