from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from latentsight.index.catalog import Catalog, ImageRow
from latentsight.index.errors import CatalogError
from sqlalchemy.exc import IntegrityError


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


def test_sha256_is_unique(db_url):
    cat = Catalog(db_url)
    cat.add_images([_row(1)])
    with pytest.raises(IntegrityError):
        cat.add_images([_row(1)])
    assert cat.count_images() == 1  # the failed batch was rolled back whole


def test_models_active_and_lookup(db_url):
    cat = Catalog(db_url)
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


def test_index_generation_increments(db_url):
    cat = Catalog(db_url)
    m = cat.add_model(name="m", kind="ae", config={}, checkpoint_path="p", checkpoint_sha256="0",
                      metrics={})
    r1 = cat.record_index(model_id=m.id, backend="faiss", spec="Flat", path="i", ntotal=3)
    r2 = cat.record_index(model_id=m.id, backend="faiss", spec="Flat", path="i", ntotal=5)
    assert (r1.generation, r2.generation, r2.ntotal) == (1, 2, 5)
    assert cat.index_for(m.id).generation == 2


def test_an_index_is_never_older_than_the_images_it_took_in(db_url):
    # a wall clock stepped back between an ingest's commit and its index write (NTP, a VM)
    # must not make every reader call the new index stale
    cat = Catalog(db_url)
    m = cat.add_model(name="m", kind="ae", config={}, checkpoint_path="p", checkpoint_sha256="0",
                      metrics={})
    ahead = datetime.now(timezone.utc) + timedelta(hours=1)
    with cat.session() as s:
        s.add(ImageRow(**_row(1), ingested_at=ahead))
    row = cat.record_index(model_id=m.id, backend="faiss", spec="Flat", path="i", ntotal=1)
    assert cat.count_images_since(row.built_at) == 0
    with cat.session() as s:  # an image ingested after that build is still seen
        s.add(ImageRow(**_row(2), ingested_at=ahead + timedelta(seconds=1)))
    assert cat.count_images_since(cat.index_for(m.id).built_at) == 1


def test_filters_by_label_source_and_synthetic(db_url):
    cat = Catalog(db_url)
    rows = [{**_row(i, label="ab"[i % 2]), "source": f"s{i % 3}", "synthetic": i % 4 == 0}
            for i in range(12)]
    ids = cat.add_images(rows)
    got = cat.image_ids(labels=["a"], sources=["s0", "s1"], synthetic=False)
    want = [i for i, r in zip(ids, rows, strict=True)
            if r["label"] == "a" and r["source"] in ("s0", "s1") and not r["synthetic"]]
    assert got == want and got
    assert cat.image_ids(labels=[], match_empty=True) == []
    assert cat.image_ids(labels=[]) == ids  # an empty list is no filter by default
    cat.close()


def test_migrations_reach_head_and_adopt_a_pre_migration_catalog(db_url):
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from latentsight.index.catalog import BASELINE, Base, alembic_config, make_engine

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    # a catalog made by create_all before migrations, without the columns added since
    engine = make_engine(db_url)
    later = {"indexes", "reviews", "tags"}  # changed or added by migrations after 0001
    Base.metadata.create_all(engine, tables=[t for n, t in Base.metadata.tables.items()
                                             if n not in later])
    pk = "SERIAL PRIMARY KEY" if engine.dialect.name == "postgresql" else "INTEGER PRIMARY KEY"
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE indexes (id {pk}, model_id INTEGER, backend VARCHAR(32), "
            "spec VARCHAR(255), path TEXT, ntotal BIGINT, generation INTEGER, "
            "built_at TIMESTAMP WITH TIME ZONE)")
    engine.dispose()
    cat = Catalog(db_url)
    with cat.engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head != BASELINE
    m = cat.add_model(name="m", kind="ae", config={}, checkpoint_path="p", checkpoint_sha256="0",
                      metrics={})
    row = cat.record_index(model_id=m.id, backend="faiss", spec="Flat", path="i", ntotal=1,
                           model_sha256="ab" * 32)
    assert cat.index_for(m.id).model_sha256 == row.model_sha256
    assert row.metric is None and row.collection is None  # columns of 0003, NULL = defaults
    cat.record_index(model_id=m.id, backend="milvus", spec="FLAT", path="m.db", ntotal=1,
                     metric="l2", collection="latentsight_m_g2")
    again = cat.index_for(m.id, "milvus")
    assert (again.metric, again.collection) == ("l2", "latentsight_m_g2")
    cat.close()
