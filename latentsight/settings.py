"""Settings: where the home is, which catalog database, which device.

Resolution order for each: the command-line option, then the environment
variable, then the default.

| setting | option      | environment          | default                  |
|---------|-------------|----------------------|--------------------------|
| home    | --home DIR  | LATENTSIGHT_HOME     | ~/.latentsight           |
| db_url  | --db-url URL| LATENTSIGHT_DB_URL   | sqlite:///HOME/catalog.db|
| device  | --device    | LATENTSIGHT_DEVICE   | auto                     |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from index.home import Home

DEFAULT_HOME = "~/.latentsight"
ENV_HOME = "LATENTSIGHT_HOME"
ENV_DB_URL = "LATENTSIGHT_DB_URL"
ENV_DEVICE = "LATENTSIGHT_DEVICE"


@dataclass(frozen=True)
class Settings:
    home: Path
    db_url: str | None = None
    device: str = "auto"

    @classmethod
    def resolve(
        cls, home: str | Path | None = None, db_url: str | None = None, device: str | None = None
    ) -> Settings:
        home = home or os.environ.get(ENV_HOME) or DEFAULT_HOME
        db_url = db_url or os.environ.get(ENV_DB_URL) or None
        device = device or os.environ.get(ENV_DEVICE) or "auto"
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            msg = f"The 'device' setting must be auto, cpu or cuda. Got {device!r} instead."
            raise ValueError(msg)
        return cls(home=Path(home).expanduser(), db_url=db_url, device=device)

    def open_home(self) -> Home:
        return Home(self.home, self.db_url)
