from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy.exc import IntegrityError

from embedder.errors import CatalogError
from index.catalog import Catalog


def _row(i: int, label: str | None = "a") -> dict:
    return {"sha256": f"{i:064x}", "path": f"/x/{i}.png", "byte_size": 10, "width": 8,
            "height": 8, "mode": "L", "format": "PNG", "label": label, "source": "t"}


def test_sqlite_file_in_wal_mode_with_full_sync(tmp_path):
    db = tmp_path / "c.db"
    cat = Catalog(f"sqlite:///{db}")
    cat.add_images([_row(1)])
    assert db.is_file()
    with cat.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    cat.close()
    # a plain sqlite3 connection sees the committed row: the data is on disk
    assert sqlite3.connect(db).execute("select count(*) from images").fetchone()[0] == 1


def test_sha256_is_unique(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    cat.add_images([_row(1)])
    with pytest.raises(IntegrityError):
        cat.add_images([_row(1)])
    assert cat.count_images() == 1  # the failed batch was rolled back whole


def test_models_active_and_lookup(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(CatalogError, match="latentsight train"):
        cat.model()
    for name in ("m1", "m2"):
        cat.add_model(name=name, kind="ae", config={}, checkpoint_path="p", checkpoint_sha256="0",
                      metrics={"val_loss": 0.1})
    assert cat.model().name == "m2"
    cat.set_active("m1")
    assert cat.model().name == "m1"
    with pytest.raises(CatalogError, match="Known models: m1, m2"):
        cat.model("nope")
    with pytest.raises(CatalogError, match="exists already"):
        cat.add_model(name="m1", kind="ae", config={}, checkpoint_path="p", checkpoint_sha256="0",
                      metrics={})


def test_index_generation_increments(tmp_path):
    cat = Catalog(f"sqlite:///{tmp_path / 'c.db'}")
    m = cat.add_model(name="m", kind="ae", config={}, checkpoint_path="p", checkpoint_sha256="0",
                      metrics={})
    r1 = cat.record_index(model_id=m.id, backend="faiss", spec="Flat", path="i", ntotal=3)
    r2 = cat.record_index(model_id=m.id, backend="faiss", spec="Flat", path="i", ntotal=5)
    assert (r1.generation, r2.generation, r2.ntotal) == (1, 2, 5)
    assert cat.index_for(m.id).generation == 2
