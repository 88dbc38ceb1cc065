"""Session fixtures: small generated image folders and one trained model per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.imagegen import write_folder

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

NEU = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "neu-cls"
# `trained_home`'s recipe: train's defaults before issue 14 (flips and turns, crops 0.5,
# rotations 10, no photometric views, no pixel PCA), so the many tests built on it keep the
# 32-dimensional model they were written for; tests/training/test_train.py covers the default.
PRE_ISSUE_14 = {"augment": True, "crop_scale": 0.5, "rotate_deg": 10.0, "jitter": 0.0,
                "noise": 0.0, "pixel_pca": 0}


# `make test` runs the suite on pytest-xdist workers (`-n 2 --dist loadfile`: each test file
# runs whole on one worker). The files that use the shared Milvus server drop its test
# collections around their tests (tests/milvus_server.py `clean`), which would pull collections
# from under a test of another worker: such a file holds the server for itself while it runs.
SHARED_SERVER_MODULE = "tests.milvus_server"


@pytest.fixture(scope="module", autouse=True)
def _milvus_server_for_this_file(request: pytest.FixtureRequest):
    if SHARED_SERVER_MODULE not in Path(request.path).read_text(errors="replace"):
        yield
        return
    from tests.milvus_server import exclusive

    with exclusive():
        yield


@pytest.fixture(scope="session")
def texture_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 labels x 12 textures of 32x32, one folder per label."""
    return write_folder(tmp_path_factory.mktemp("textures"), per_label=12)


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, texture_dir: Path):
    """A home with the texture folder ingested, a small AE trained and its index built."""
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.index.manager import build_index
    from latentsight.training.train import TrainConfig, train

    home = Home(tmp_path_factory.mktemp("home"))
    ingest_paths(home, [texture_dir], labels_from_folders=True, progress=False)
    cfg = TrainConfig(model="ae", epochs=2, batch_size=16, name="test-ae", device="cpu",
                      model_config={"image_size": 32, "depth": 3, "latent_dim": 32, "width": 8},
                      **PRE_ISSUE_14)
    train(home, cfg, progress=False)
    build_index(home, home.catalog.model("test-ae"), device="cpu", progress=False, workers=0)
    return home


@pytest.fixture(scope="session")
def neu_dir() -> Path:
    if not NEU.is_dir():
        pytest.skip(f"NEU-CLS data set not found at {NEU}")
    return NEU


@pytest.fixture(scope="session")
def anomaly_home(tmp_path_factory: pytest.TempPathFactory):
    """A home whose scanning model learned 40 'good' stripe textures (32x32, 16-pixel tiles).

    Also holds 12 'checker' textures (anomalies for `eval anomaly`). Tiny
    models run fastest single-threaded, so the session switches to 1 thread.
    """
    from latentsight.index.home import Home
    from latentsight.index.ingest import ingest_paths
    from latentsight.training.anomaly import train_scorer
    from latentsight.training.train import TrainConfig

    from tests.imagegen import write_folder, write_normal_folder

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("anomaly")
    normal = write_normal_folder(root / "good", n=40, seed=1)
    other = write_folder(root / "others", per_label=12, seed=2)
    home = Home(root / "home")
    ingest_paths(home, [normal], label="good", progress=False, workers=0)
    ingest_paths(home, [other / "checker"], label="checker", progress=False, workers=0)
    cfg = TrainConfig(epochs=80, batch_size=16, lr=3e-3, patience=80, name="scan-test",
                      device="cpu", model_config={"image_size": 16, "depth": 2, "width": 16,
                                                  "latent_dim": 32})
    train_scorer(home, "good", cfg, fpr=0.1, progress=False, workers=0)
    return home


@pytest.fixture()
def own_anomaly_home(anomaly_home, tmp_path):
    """A private copy of `anomaly_home` for a test that trains or changes models in it.

    `anomaly_home` is shared by the whole session: a model trained into it would show up
    in other files' tests (the dashboard's scan page lists every scan model).
    """
    from tests.homes import copy_home

    return copy_home(anomaly_home, tmp_path / "own-anomaly-home")


PG_ENV = "LATENTSIGHT_TEST_PG_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty catalog URL: a SQLite file, then a new PostgreSQL database.

    The PostgreSQL case skips only when LATENTSIGHT_TEST_PG_URL is unset (CI sets it:
    .ci/run starts a server with .ci/start-postgres.sh).
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    admin_url = os.environ.get(PG_ENV)
    if not admin_url:
        pytest.skip(f"{PG_ENV} is not set (eval \"$(.ci/start-postgres.sh)\" starts a server)")
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"lt_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
