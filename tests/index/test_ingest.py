from __future__ import annotations

import shutil

import numpy as np
import pytest
from latentsight.embedder.images import decode_file
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.paths import to_catalog

from tests.badfiles import make_corpus


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    corpus = make_corpus(root / "mixed")
    (root / "mixed" / "notes.txt").write_text("not an image and not named like one")
    return root / "mixed", corpus


def test_bad_corpus_ingests_to_completion(tmp_path, corpus_dir, db_url):
    folder, corpus = corpus_dir
    home = Home(tmp_path / "h", db_url)
    rep = ingest_paths(home, [folder], progress=False, workers=1)
    bad = {to_catalog(p) for p, e in corpus.values() if e == "fail"}
    good = {to_catalog(p) for p, e in corpus.values() if e == "ok"}
    failed = {f.path: f.error for f in rep.failed}
    assert set(failed) == bad
    assert all(reason for reason in failed.values())
    assert rep.added == len(good)
    assert rep.skipped == 1  # notes.txt
    stored = {r.path: r for r in home.catalog.images()}
    assert set(stored) == good
    # failures are kept in the catalog with their reasons
    assert {f.path for f in home.catalog.failures()} == bad
    # the EXIF-rotated JPEG is stored upright
    rotated = stored[to_catalog(corpus["exif_rotated.jpg"][0])]
    assert (rotated.width, rotated.height) == (20, 40)
    assert stored[to_catalog(corpus["cmyk.jpg"][0])].mode == "CMYK"


def test_reingest_adds_nothing_and_dedups_by_content(tmp_path, texture_dir, db_url):
    home = Home(tmp_path / "h", db_url)
    first = ingest_paths(home, [texture_dir], labels_from_folders=True, progress=False, workers=0)
    assert first.added == 48 and not first.failed
    again = ingest_paths(home, [texture_dir], progress=False, workers=0)
    assert (again.added, again.duplicates) == (0, 48)
    copy = tmp_path / "copy"
    shutil.copytree(texture_dir / "checker", copy)
    third = ingest_paths(home, [copy], progress=False, workers=0)
    assert (third.added, third.duplicates) == (0, 12)
    labels = home.catalog.label_counts()
    assert labels == {"stripes_h": 12, "stripes_v": 12, "checker": 12, "blobs": 12}


def test_symlink_loop_is_walked_once(tmp_path, texture_dir):
    root = tmp_path / "loop"
    shutil.copytree(texture_dir / "blobs", root / "a")
    (root / "a" / "back").symlink_to(root, target_is_directory=True)
    home = Home(tmp_path / "h")
    rep = ingest_paths(home, [root], progress=False, workers=0)
    assert rep.added == 12


def test_label_options_and_missing_path(tmp_path, texture_dir, db_url):
    home = Home(tmp_path / "h", db_url)
    with pytest.raises(CatalogError, match="not both"):
        ingest_paths(home, [texture_dir], label="x", labels_from_folders=True)
    with pytest.raises(CatalogError, match="no such file"):
        ingest_paths(home, [tmp_path / "nowhere"])
    rep = ingest_paths(home, [texture_dir / "checker"], label="grid", progress=False, workers=0)
    assert rep.added == 12 and home.catalog.label_counts() == {"grid": 12}


def test_ingest_into_existing_index_adds_without_rebuild(
    tmp_path, trained_home, texture_dir, db_url
):
    from latentsight.index.manager import open_index, status

    home = Home(tmp_path / "h2", db_url)
    # reuse the session model: copy its catalog row + checkpoint into a fresh home
    m = trained_home.catalog.model("test-ae")
    home.catalog.add_model(name=m.name, kind=m.kind, config=m.config,
                           checkpoint_path=str(trained_home.resolve(m.checkpoint_path)),
                           checkpoint_sha256=m.checkpoint_sha256,
                           metrics=m.metrics)
    from latentsight.index.manager import build_index

    ingest_paths(home, [texture_dir / "checker"], label="checker", progress=False, workers=0)
    build_index(home, home.catalog.model(), device="cpu", progress=False, workers=0)
    gen0 = home.catalog.index_for(home.catalog.model().id).generation
    rep = ingest_paths(home, [texture_dir / "blobs"], label="blobs", progress=False, workers=1)
    assert rep.indexed == 12
    st = status(home, home.catalog.model())
    assert st.ok and st.ntotal == 24 and st.generation == gen0 + 1
    store, _ = open_index(home, home.catalog.model())
    # the vectors added from ingest's already-decoded arrays equal a fresh embedding
    from latentsight.index.manager import load_encoder

    enc = load_encoder(home, home.catalog.model(), "cpu")
    row = home.catalog.images(labels=["blobs"])[0]
    vec = enc.embed_pixels([decode_file(row.path).pixels])
    _, found = store.search(vec, 1)
    assert found[0, 0] == row.id
    assert np.isfinite(vec).all()
