"""Settings: where the home is, which catalog database, which device.

Resolution order for each: the command-line option, then the environment
variable, then the default.

| setting | option      | environment          | default                  |
|---------|-------------|----------------------|--------------------------|
| home    | --home DIR  | LATENTSIGHT_HOME     | ~/.latentsight           |
| db_url  | --db-url URL| LATENTSIGHT_DB_URL   | sqlite:///HOME/catalog.db|
| device  | --device    | LATENTSIGHT_DEVICE   | auto                     |
| backend | --backend   | LATENTSIGHT_BACKEND  | faiss (or milvus)        |
| milvus_uri | --uri    | LATENTSIGHT_MILVUS_URI | HOME/indexes/NAME.milvus.db (Milvus Lite) |
| milvus token | -      | LATENTSIGHT_MILVUS_TOKEN | none (user:password or API key) |

The deployment (docker-compose.yml) sets these for its services; the
SERVICES table below names the compose service and port each URL points at,
and tests/latentsight/test_compose.py checks the compose file against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from latentsight.embedder.devices import check_device
from latentsight.index.backends import BACKENDS, DEFAULT_BACKEND, check_backend  # noqa: F401 (BACKENDS: re-exported)
from latentsight.index.home import Home

DEFAULT_HOME = "~/.latentsight"
ENV_HOME = "LATENTSIGHT_HOME"
ENV_DB_URL = "LATENTSIGHT_DB_URL"
ENV_DEVICE = "LATENTSIGHT_DEVICE"
ENV_BACKEND = "LATENTSIGHT_BACKEND"
ENV_MILVUS_URI = "LATENTSIGHT_MILVUS_URI"
ENV_MILVUS_TOKEN = "LATENTSIGHT_MILVUS_TOKEN"  # read by index.milvus_store

# Where the server-side settings point in the docker-compose deployment:
# setting -> (compose service, container port). Ports are the engines' defaults.
DASHBOARD_PORT = 8501
SERVICES: dict[str, tuple[str, int]] = {
    ENV_DB_URL: ("postgres", 5432),
    ENV_MILVUS_URI: ("milvus", 19530),
}
# Environment the latentsight containers get (the values the compose file must carry).
COMPOSE_ENV = (ENV_HOME, ENV_DB_URL, ENV_MILVUS_URI, ENV_BACKEND)


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str | None = None
    device: str = "auto"
    backend: str = "faiss"
    milvus_uri: str | None = None

    @classmethod
    def resolve(
        cls,
        home: str | Path | None = None,
        db_url: str | None = None,
        device: str | None = None,
        backend: str | None = None,
        milvus_uri: str | None = None,
    ) -> Settings:
        home = home or os.environ.get(ENV_HOME) or DEFAULT_HOME
        db_url = db_url or os.environ.get(ENV_DB_URL) or None
        device = device or os.environ.get(ENV_DEVICE) or "auto"
        check_device(device)
        backend = check_backend(backend or os.environ.get(ENV_BACKEND) or DEFAULT_BACKEND)
        milvus_uri = milvus_uri or os.environ.get(ENV_MILVUS_URI) or None
        return cls(home=Path(home).expanduser(), db_url=db_url, device=device, backend=backend,
                   milvus_uri=milvus_uri)

    def open_home(self) -> Home:
        return Home(self.home, self.db_url)
