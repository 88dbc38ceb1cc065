"""Alembic environment for the catalog: the target schema is index.catalog's metadata.

Run by `index.catalog.Catalog` (upgrade to head on first use) and by the
`alembic` command line (see index/README.md), which passes the URL through
`-x url=...` or the LATENTSIGHT_DB_URL environment variable.
"""

from __future__ import annotations

import os

from alembic import context
from latentsight.index.catalog import Base
from sqlalchemy import create_engine

config = context.config
target_metadata = Base.metadata


def _url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(
        "LATENTSIGHT_DB_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        msg = "No catalog URL: pass -x url=sqlite:///HOME/catalog.db or set LATENTSIGHT_DB_URL."
        raise SystemExit(msg)
    return url


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER TABLE via copy on SQLite
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
    else:
        engine = create_engine(_url())
        with engine.begin() as conn:
            _run(conn)
        engine.dispose()
