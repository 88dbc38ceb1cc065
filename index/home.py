"""The home directory: where the catalog database, models, indexes and reports live."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from latentsight.index.catalog import Catalog

DB_FILE = "catalog.db"


class Home:
    """A latentsight home. The catalog URL defaults to a SQLite file inside it.

    Layout::

        HOME/catalog.db      the catalog (unless a --db-url points elsewhere)
        HOME/models/NAME/    model.safetensors + config.json per trained model
        HOME/indexes/        one vector index file per (model, backend)
        HOME/reports/        scan reports, evaluation outputs
    """

    def __init__(self, root: str | Path, db_url: str | None = None) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_url = db_url or f"sqlite:///{self.root / DB_FILE}"

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.db_url)

    def _sub(self, name: str) -> Path:
        p = self.root / name
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def models_dir(self) -> Path:
        return self._sub("models")

    @property
    def indexes_dir(self) -> Path:
        return self._sub("indexes")

    @property
    def reports_dir(self) -> Path:
        return self._sub("reports")

    def rel(self, path: str | Path) -> str:
        """Store paths inside the home relative to it, so a home can be moved or copied."""
        p = Path(path).resolve()
        try:
            return str(p.relative_to(self.root))
        except ValueError:
            return str(p)

    def resolve(self, path: str | Path) -> Path:
        """The absolute path of a path stored by `rel`."""
        p = Path(path)
        return p if p.is_absolute() else self.root / p

    def close(self) -> None:
        if "catalog" in self.__dict__:
            self.catalog.close()

    def __repr__(self) -> str:
        return f"Home({str(self.root)!r})"
