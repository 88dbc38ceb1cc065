"""The catalog: images, models, indexes and ingest failures in one SQL database.

SQLAlchemy 2 typed ORM; works on any SQLAlchemy URL (a SQLite file by
default, PostgreSQL for teams). SQLite runs in WAL mode with
`synchronous=FULL`, so a committed batch survives a crash or power loss.
The catalog is the source of truth: vector indexes are rebuilt from it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latentsight.index.errors import CatalogError
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _aware(when: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were stored in UTC."""
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def _built_now(s: Session) -> datetime:
    """The time an index covering every catalog image was built: now, never before its newest.

    An index is recorded under the write lock after it took in every image, so
    no image can be newer than it; a wall clock stepped back (NTP, a VM's clock)
    between the images' commit and this write must not make readers call it stale.
    """
    now = utcnow()
    newest = s.scalar(select(func.max(ImageRow.ingested_at)))
    return max(now, _aware(newest)) if newest is not None else now


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
MAX_TEXT_CHARS = 255  # labels and sources, on every database and vector store (docs/reliability.md)


def check_text(value: str | None, what: str) -> None:
    """Refuse a label or source over MAX_TEXT_CHARS characters (SQLite and PostgreSQL alike)."""
    if value is not None and len(value) > MAX_TEXT_CHARS:
        msg = (f"The {what} must be at most {MAX_TEXT_CHARS} characters. Got {len(value)} "
               f"characters instead: {value[:40]!r}...")
        raise CatalogError(msg)


def check_model_name(name: str) -> None:
    """A model name becomes a folder and file names in the home: one plain path component."""
    if not MODEL_NAME.fullmatch(name) or ".." in name:
        msg = (f"The model name must be 1-100 letters, digits, '.', '_' or '-', starting with a "
               f"letter or digit (no '/', no '..'). Got {name!r} instead.")
        raise CatalogError(msg)


def _db_failure(e: Exception, url: str) -> CatalogError:
    """One line for a database error a user can cause (a full disk, a too-long value).

    Only the driver's first line is kept: SQLAlchemy's own text lists every
    row's parameters (paths included).
    """
    orig = getattr(e, "orig", None) or e
    first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
    code = getattr(orig, "sqlite_errorname", None)  # e.g. SQLITE_IOERR_SHMSIZE
    if code and code not in first:
        first = f"{first} [{code}]"
    hint = ""
    if "too long" in first or "StringDataRightTruncation" in type(orig).__name__:
        hint = f" (labels and sources are limited to {MAX_TEXT_CHARS} characters)"
    elif "full" in first.lower() or (code and code.startswith("SQLITE_IOERR")
                                     and _nearly_full(url)):
        # SQLite says "disk I/O error" when a full disk refuses its WAL index (-shm)
        hint = " (the disk is full: free some space and run the command again; committed " \
               "work is kept)"
    return CatalogError(f"Cannot write the catalog at {_safe_url(url)}: {first}{hint}")


def _nearly_full(url: str, margin: int = 1 << 20) -> bool:
    """Whether the file system holding a SQLite catalog has under `margin` bytes free."""
    from sqlalchemy.engine import make_url

    try:
        db = make_url(url).database
        st = os.statvfs(Path(db).resolve().parent) if db else None
    except (OSError, ValueError):
        return False
    return st is not None and st.f_bavail * st.f_frsize < margin


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


class Base(DeclarativeBase):
    pass


class ImageRow(Base):
    __tablename__ = "images"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    path: Mapped[str] = mapped_column(Text)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    label: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    source: Mapped[str] = mapped_column(String(255), default="ingest", index=True)
    synthetic: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    generator_id: Mapped[int | None] = mapped_column(
        ForeignKey("models.id", ondelete="SET NULL"), nullable=True
    )  # the GAN that made a synthetic image
    ingested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "sha256": self.sha256, "path": self.path, "byte_size": self.byte_size,
            "width": self.width, "height": self.height, "mode": self.mode, "format": self.format,
            "label": self.label, "source": self.source, "synthetic": self.synthetic,
            "generator_id": self.generator_id,
            "ingested_at": self.ingested_at.isoformat() if self.ingested_at else None,
        }


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(32))
    role: Mapped[str] = mapped_column(String(16), default="encoder")  # encoder | generator
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    checkpoint_path: Mapped[str] = mapped_column(Text)
    checkpoint_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=False)


class IndexRow(Base):
    __tablename__ = "indexes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    backend: Mapped[str] = mapped_column(String(32))
    spec: Mapped[str] = mapped_column(String(255))
    path: Mapped[str] = mapped_column(Text)
    ntotal: Mapped[int] = mapped_column(BigInteger, default=0)
    generation: Mapped[int] = mapped_column(Integer, default=0)
    built_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # checkpoint the vectors were embedded with (index verify reports a stale model)
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # cosine | ip | l2 (None: cosine, every index built before the column existed)
    metric: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # the Milvus collection holding the vectors (None: the model's default name); a
    # rebuild fills a new collection, then switches this column, then drops the old one
    collection: Mapped[str | None] = mapped_column(String(255), nullable=True)


class ScanRow(Base):
    """One anomaly scan: which model, which threshold, over which paths."""

    __tablename__ = "scans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    threshold: Mapped[float] = mapped_column(Float)
    fpr: Mapped[float | None] = mapped_column(Float, nullable=True)
    paths: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | done
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    n_flagged: Mapped[int] = mapped_column(Integer, default=0)
    n_failed: Mapped[int] = mapped_column(Integer, default=0)
    report_dir: Mapped[str | None] = mapped_column(Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ScanResultRow(Base):
    """One image of a scan: its score and flag, or the reason it could not be scored."""

    __tablename__ = "scan_results"
    __table_args__ = (UniqueConstraint("scan_id", "path", name="uq_scan_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    path: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    anomalous: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    nearest_ids: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


REVIEW_MARKS = ("defect", "false_alarm", "missed")  # what an analyst says about a scan result


class ReviewRow(Base):
    """An analyst's mark on one scan result: defect, false alarm or missed; who and when."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(
        ForeignKey("scan_results.id", ondelete="CASCADE"), unique=True, index=True)
    scan_id: Mapped[int] = mapped_column(ForeignKey("scans.id", ondelete="CASCADE"), index=True)
    mark: Mapped[str] = mapped_column(String(16))
    reviewer: Mapped[str] = mapped_column(String(255))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TagRow(Base):
    """A free-text tag on a catalog image (filterable on every dashboard page)."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("image_id", "tag", name="uq_image_tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id", ondelete="CASCADE"), index=True)
    tag: Mapped[str] = mapped_column(String(255), index=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IngestFailureRow(Base):
    __tablename__ = "ingest_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    path: Mapped[str] = mapped_column(Text)
    error_class: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def make_engine(url: str) -> Engine:
    """Create an engine; SQLite gets WAL, synchronous=FULL, foreign keys and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


MIGRATIONS = Path(__file__).resolve().parent / "migrations"
BASELINE = "0001"  # the schema `create_all` made before migrations existed


def alembic_config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def migrate(engine: Engine) -> str | None:
    """Upgrade the catalog schema to the newest Alembic revision; returns the revision.

    A fresh database gets every migration; a catalog created before migrations
    (tables but no alembic_version) is stamped at the baseline first. Cheap when
    already at head (one query), so every `Catalog()` calls it.
    """
    from alembic import command
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    cfg = alembic_config()
    head = ScriptDirectory.from_config(cfg).get_current_head()
    with engine.connect() as conn:
        current = MigrationContext.configure(conn).get_current_revision()
        tables = set(inspect(conn).get_table_names())
    if current == head:
        return current
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            if current is None and "images" in tables:
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, "head")
    except (OperationalError, ProgrammingError, IntegrityError):
        # another process may have migrated at the same moment: fine if it reached head
        with engine.connect() as conn:
            if MigrationContext.configure(conn).get_current_revision() != head:
                raise
    return head


class Catalog:
    """Typed access to the catalog database. Migrated to the newest schema on first use."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            migrate(self.engine)
        except (OperationalError, ProgrammingError) as e:
            msg = f"Cannot open the catalog at {_safe_url(url)}: {e.orig or e}"
            raise CatalogError(msg) from e
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back on any error.

        A full disk, a failing device or a value the database refuses becomes
        a one-line CatalogError (no parameters dumped).
        """
        try:
            with self._sessions() as s, s.begin():
                yield s
        except (DataError, OperationalError) as e:
            raise _db_failure(e, self.url) from e

    def close(self) -> None:
        self.engine.dispose()

    # ---- images -------------------------------------------------------------------------

    def count_images(self, *, label: str | None = None, synthetic: bool | None = None) -> int:
        with self.session() as s:
            q = select(func.count(ImageRow.id))
            if label is not None:
                q = q.where(ImageRow.label == label)
            if synthetic is not None:
                q = q.where(ImageRow.synthetic.is_(synthetic))
            return int(s.scalar(q) or 0)

    def count_images_since(self, when: datetime) -> int:
        """Images ingested strictly after `when` (used to tell a stale index)."""
        with self.session() as s:
            q = select(func.count(ImageRow.id)).where(ImageRow.ingested_at > when)
            return int(s.scalar(q) or 0)

    def known_sha256(self, digests: Iterable[str]) -> set[str]:
        digests = list(digests)
        found: set[str] = set()
        with self.session() as s:
            for i in range(0, len(digests), 500):
                chunk = digests[i : i + 500]
                found.update(s.scalars(select(ImageRow.sha256).where(ImageRow.sha256.in_(chunk))))
        return found

    def add_images(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Insert image rows in one transaction; returns their ids in order.

        One multi-row INSERT ... RETURNING where the database returns ids in
        parameter order (SQLite, PostgreSQL), else one ORM object per row.
        """
        for r in rows:
            check_text(r.get("label"), "label")
            check_text(r.get("source"), "source")
        if not rows:
            return []
        with self.session() as s:
            if self.engine.dialect.insert_executemany_returning_sort_by_parameter_order:
                stmt = insert(ImageRow).returning(ImageRow.id, sort_by_parameter_order=True)
                return list(s.scalars(stmt, [dict(r) for r in rows]))
            objs = [ImageRow(**r) for r in rows]
            s.add_all(objs)
            s.flush()
            return [o.id for o in objs]

    def images(
        self,
        *,
        ids: Sequence[int] | None = None,
        labels: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        labeled_only: bool = False,
        synthetic: bool | None = None,
    ) -> list[ImageRow]:
        """Image rows by id; `synthetic` True/False keeps only GAN-made / real ones."""
        with self.session() as s:
            q = select(ImageRow).order_by(ImageRow.id)
            if ids is not None:
                q = q.where(ImageRow.id.in_(list(ids)))
            if labels:
                q = q.where(ImageRow.label.in_(list(labels)))
            if sources:
                q = q.where(ImageRow.source.in_(list(sources)))
            if labeled_only:
                q = q.where(ImageRow.label.is_not(None))
            if synthetic is not None:
                q = q.where(ImageRow.synthetic.is_(synthetic))
            return list(s.scalars(q))

    def image_ids(
        self,
        *,
        labels: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        synthetic: bool | None = None,
        match_empty: bool = False,
    ) -> list[int]:
        """Ids of the images matching every filter given (None = no filter on that field).

        An empty `labels` or `sources` means no filter, unless `match_empty`, where it
        matches nothing (how a vector-store Filter reads it).
        """
        with self.session() as s:
            q = select(ImageRow.id).order_by(ImageRow.id)
            if labels or (match_empty and labels is not None):
                q = q.where(ImageRow.label.in_(list(labels)))
            if sources or (match_empty and sources is not None):
                q = q.where(ImageRow.source.in_(list(sources)))
            if synthetic is not None:
                q = q.where(ImageRow.synthetic == bool(synthetic))
            return list(s.scalars(q))

    def image(self, image_id: int) -> ImageRow:
        with self.session() as s:
            row = s.get(ImageRow, image_id)
        if row is None:
            raise CatalogError(f"No image with id {image_id} in the catalog.")
        return row

    def distinct_values(self) -> tuple[list[str], list[str]]:
        """The labels and the sources present in the catalog, each sorted."""
        with self.session() as s:
            labels = s.scalars(select(ImageRow.label).distinct()
                               .where(ImageRow.label.is_not(None)))
            labels = sorted(labels)
            sources = sorted(s.scalars(select(ImageRow.source).distinct()))
        return labels, sources

    def page(
        self,
        *,
        labels: Sequence[str] | None = None,
        sources: Sequence[str] | None = None,
        synthetic: bool | None = None,
        tags: Sequence[str] | None = None,
        ids: Sequence[int] | None = None,
        offset: int = 0,
        limit: int = 24,
        newest_first: bool = False,
    ) -> tuple[list[ImageRow], int]:
        """One page of images matching every filter given, and how many match in all.

        Empty `labels`, `sources` or `tags` do not filter; `tags` keeps images with any
        of them; `ids` restricts to those images (an empty list matches nothing).
        """

        def where(q: Any) -> Any:
            if labels:
                q = q.where(ImageRow.label.in_(list(labels)))
            if sources:
                q = q.where(ImageRow.source.in_(list(sources)))
            if synthetic is not None:
                q = q.where(ImageRow.synthetic.is_(bool(synthetic)))
            if tags:
                q = q.where(ImageRow.id.in_(select(TagRow.image_id)
                                            .where(TagRow.tag.in_(list(tags)))))
            if ids is not None:
                q = q.where(ImageRow.id.in_([int(i) for i in ids]))
            return q

        with self.session() as s:
            total = int(s.scalar(where(select(func.count(ImageRow.id)))) or 0)
            order = ImageRow.id.desc() if newest_first else ImageRow.id
            q = where(select(ImageRow)).order_by(order).offset(max(0, int(offset)))
            rows = list(s.scalars(q.limit(max(0, int(limit)))))
        return rows, total

    # ---- tags ---------------------------------------------------------------------------

    def add_tag(self, image_ids: Sequence[int], tag: str) -> int:
        """Tag images (already tagged ones are left alone); returns how many got the tag."""
        tag = tag.strip()
        if not tag or len(tag) > 255:
            msg = f"A tag must be 1-255 characters. Got {tag!r} instead."
            raise CatalogError(msg)
        with self.session() as s:
            have = set(s.scalars(select(TagRow.image_id).where(
                TagRow.tag == tag, TagRow.image_id.in_([int(i) for i in image_ids]))))
            new = [int(i) for i in dict.fromkeys(image_ids) if int(i) not in have]
            s.add_all(TagRow(image_id=i, tag=tag) for i in new)
            return len(new)

    def remove_tag(self, image_ids: Sequence[int], tag: str) -> int:
        with self.session() as s:
            rows = list(s.scalars(select(TagRow).where(
                TagRow.tag == tag, TagRow.image_id.in_([int(i) for i in image_ids]))))
            for r in rows:
                s.delete(r)
            return len(rows)

    def tags(self, image_ids: Sequence[int] | None = None) -> dict[int, list[str]]:
        """image id -> its tags (sorted); every tagged image when `image_ids` is None."""
        with self.session() as s:
            q = select(TagRow.image_id, TagRow.tag).order_by(TagRow.tag)
            if image_ids is not None:
                q = q.where(TagRow.image_id.in_([int(i) for i in image_ids]))
            out: dict[int, list[str]] = {}
            for image_id, tag in s.execute(q):
                out.setdefault(int(image_id), []).append(tag)
            return out

    def tagged_ids(self, tags: Sequence[str]) -> set[int]:
        """Ids of the images carrying any of `tags` (an empty `tags` matches nothing)."""
        if not tags:
            return set()
        with self.session() as s:
            q = select(TagRow.image_id).where(TagRow.tag.in_(list(tags))).distinct()
            return {int(i) for i in s.scalars(q)}

    def all_tags(self) -> list[str]:
        with self.session() as s:
            return sorted(s.scalars(select(TagRow.tag).distinct()))

    def label_counts(self, *, synthetic: bool | None = None) -> dict[str | None, int]:
        with self.session() as s:
            q = select(ImageRow.label, func.count())
            if synthetic is not None:
                q = q.where(ImageRow.synthetic.is_(synthetic))
            rows = s.execute(q.group_by(ImageRow.label))
            return {label: int(n) for label, n in rows}

    def delete_images(self, ids: Sequence[int]) -> int:
        with self.session() as s:
            rows = list(s.scalars(select(ImageRow).where(ImageRow.id.in_(list(ids)))))
            for r in rows:
                s.delete(r)
            return len(rows)

    # ---- scans and reviews ----------------------------------------------------------------

    def scans(self, limit: int | None = None) -> list[ScanRow]:
        """Anomaly scans, newest first."""
        with self.session() as s:
            q = select(ScanRow).order_by(ScanRow.id.desc())
            return list(s.scalars(q.limit(limit) if limit else q))

    def scan(self, scan_id: int) -> ScanRow:
        with self.session() as s:
            row = s.get(ScanRow, int(scan_id))
        if row is None:
            raise CatalogError(f"No scan with id {scan_id} in the catalog.")
        return row

    def scan_results(self, scan_id: int) -> list[ScanResultRow]:
        """Every result of a scan (scored or failed), in the order they were recorded."""
        with self.session() as s:
            q = select(ScanResultRow).where(ScanResultRow.scan_id == int(scan_id))
            return list(s.scalars(q.order_by(ScanResultRow.id)))

    def count_scan_results(self, scan_id: int) -> int:
        with self.session() as s:
            q = select(func.count(ScanResultRow.id)).where(ScanResultRow.scan_id == int(scan_id))
            return int(s.scalar(q) or 0)

    def scan_result(self, result_id: int) -> ScanResultRow | None:
        with self.session() as s:
            return s.get(ScanResultRow, int(result_id))

    def latest_scores(
        self, sha256s: Sequence[str] | None = None
    ) -> dict[str, tuple[float, int, int]]:
        """sha256 -> (score, scan-result id, scan id) from the newest finished scan of it."""
        out: dict[str, tuple[float, int, int]] = {}
        with self.session() as s:
            q = (select(ScanResultRow.sha256, ScanResultRow.score, ScanResultRow.id,
                        ScanResultRow.scan_id)
                 .join(ScanRow, ScanRow.id == ScanResultRow.scan_id)
                 .where(ScanResultRow.score.is_not(None), ScanResultRow.sha256.is_not(None),
                        ScanRow.status == "done"))
            if sha256s is not None:
                q = q.where(ScanResultRow.sha256.in_(list(sha256s)))
            for sha, score, rid, sid in s.execute(q.order_by(ScanResultRow.id)):
                out[sha] = (float(score), int(rid), int(sid))  # newer results overwrite older
        return out

    def set_review(self, result_id: int, mark: str | None, reviewer: str) -> None:
        """Mark a scan result (defect | false_alarm | missed) or clear its mark (None)."""
        if mark is not None and mark not in REVIEW_MARKS:
            msg = f"A review mark must be one of {', '.join(REVIEW_MARKS)}. Got {mark!r} instead."
            raise CatalogError(msg)
        reviewer = (reviewer or "").strip()[:255]
        if mark is not None and not reviewer:
            raise CatalogError("A review needs the reviewer's name.")
        with self.session() as s:
            res = s.get(ScanResultRow, int(result_id))
            if res is None:
                raise CatalogError(f"No scan result with id {result_id} in the catalog.")
            row = s.scalar(select(ReviewRow).where(ReviewRow.result_id == res.id))
            if mark is None:
                if row is not None:
                    s.delete(row)
                return
            if row is None:
                s.add(ReviewRow(result_id=res.id, scan_id=res.scan_id, mark=mark,
                                reviewer=reviewer, at=utcnow()))
            else:
                row.mark, row.reviewer, row.at = mark, reviewer, utcnow()

    def reviews(self, *, scan_id: int | None = None,
                model_id: int | None = None) -> dict[int, ReviewRow]:
        """scan-result id -> its review, for one scan, one model's scans, or all."""
        with self.session() as s:
            q = select(ReviewRow)
            if scan_id is not None:
                q = q.where(ReviewRow.scan_id == int(scan_id))
            if model_id is not None:
                q = q.join(ScanRow, ScanRow.id == ReviewRow.scan_id).where(
                    ScanRow.model_id == int(model_id))
            return {r.result_id: r for r in s.scalars(q)}

    # ---- failures -----------------------------------------------------------------------

    def record_failures(self, failures: Sequence[tuple[str, str, str]]) -> None:
        """Record (path, error_class, message) rows."""
        if not failures:
            return
        with self.session() as s:
            s.add_all(IngestFailureRow(path=p, error_class=c, message=m) for p, c, m in failures)

    def failures(self, limit: int = 1000) -> list[IngestFailureRow]:
        with self.session() as s:
            q = select(IngestFailureRow).order_by(IngestFailureRow.id.desc()).limit(limit)
            return list(s.scalars(q))

    # ---- models -------------------------------------------------------------------------

    def add_model(
        self,
        *,
        name: str,
        kind: str,
        config: dict[str, Any],
        checkpoint_path: str,
        checkpoint_sha256: str,
        metrics: dict[str, Any],
        activate: bool = True,
        role: str = "encoder",
    ) -> ModelRow:
        check_model_name(name)
        with self.session() as s:
            if s.scalar(select(ModelRow).where(ModelRow.name == name)) is not None:
                raise CatalogError(f"A model named {name!r} exists already; pick another --name.")
            activate = activate and role == "encoder"
            if activate:
                for m in s.scalars(select(ModelRow).where(ModelRow.active.is_(True))):
                    m.active = False
            row = ModelRow(
                name=name, kind=kind, config=json.loads(json.dumps(config)),
                checkpoint_path=checkpoint_path, checkpoint_sha256=checkpoint_sha256,
                metrics=json.loads(json.dumps(metrics)), active=activate, role=role,
            )
            s.add(row)
            s.flush()
            return row

    def models(self) -> list[ModelRow]:
        with self.session() as s:
            return list(s.scalars(select(ModelRow).order_by(ModelRow.created_at, ModelRow.id)))

    def model(self, name: str | None = None) -> ModelRow:
        """The model called `name`, or the active one when `name` is None."""
        with self.session() as s:
            if name is None:
                enc = select(ModelRow).where(ModelRow.role == "encoder")
                row = s.scalar(enc.where(ModelRow.active.is_(True)))
                if row is None:
                    row = s.scalar(enc.order_by(ModelRow.id.desc()))
                if row is None:
                    raise CatalogError("No model trained yet. Run: latentsight train")
                return row
            row = s.scalar(select(ModelRow).where(ModelRow.name == name))
        if row is None:
            known = ", ".join(m.name for m in self.models()) or "none"
            raise CatalogError(f"No model named {name!r}. Known models: {known}.")
        return row

    def set_active(self, name: str) -> ModelRow:
        target = self.model(name)
        if target.role != "encoder":
            raise CatalogError(f"Model {name!r} is a {target.role}, not an encoder; it cannot be "
                               "the active model.")
        with self.session() as s:
            for m in s.scalars(select(ModelRow)):
                m.active = m.id == target.id
        return self.model(name)

    def update_model_metrics(self, model_id: int, metrics: dict[str, Any]) -> None:
        with self.session() as s:
            row = s.get(ModelRow, model_id)
            if row is None:
                raise CatalogError(f"No model with id {model_id}.")
            row.metrics = {**(row.metrics or {}), **json.loads(json.dumps(metrics))}

    # ---- indexes ------------------------------------------------------------------------

    def index_for(self, model_id: int, backend: str | None = None) -> IndexRow | None:
        with self.session() as s:
            q = select(IndexRow).where(IndexRow.model_id == model_id)
            if backend is not None:
                q = q.where(IndexRow.backend == backend)
            return s.scalar(q.order_by(IndexRow.built_at.desc(), IndexRow.id.desc()))

    def record_index(
        self, *, model_id: int, backend: str, spec: str, path: str, ntotal: int,
        model_sha256: str | None = None, metric: str | None = None,
        collection: str | None = None,
    ) -> IndexRow:
        """Create or update the index row of (model, backend) and bump its generation.

        `model_sha256`, `metric` and `collection` left None keep the row's values.
        """
        with self.session() as s:
            q = select(IndexRow).where(IndexRow.model_id == model_id, IndexRow.backend == backend)
            row = s.scalar(q)
            if row is None:
                row = IndexRow(model_id=model_id, backend=backend, spec=spec, path=path,
                               ntotal=ntotal, generation=1, built_at=_built_now(s),
                               model_sha256=model_sha256, metric=metric,
                               collection=collection)
                s.add(row)
            else:
                row.spec, row.path, row.ntotal = spec, path, ntotal
                if model_sha256 is not None:
                    row.model_sha256 = model_sha256
                if metric is not None:
                    row.metric = metric
                if collection is not None:
                    row.collection = collection
                row.generation += 1
                row.built_at = _built_now(s)
            s.flush()
            return row

    def indexes(self) -> list[IndexRow]:
        with self.session() as s:
            return list(s.scalars(select(IndexRow).order_by(IndexRow.id)))
