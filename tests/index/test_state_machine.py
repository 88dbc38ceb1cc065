"""Property-based: random sequences of ingest / delete / re-ingest / rebuild / search.

Invariants after every step: the catalog holds exactly the images that the
model of the test says it should (by sha256, each once); when the active model
has an index, its ids are exactly the catalog's ids; every search hit is a
catalog image.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from latentsight.index.catalog import ImageRow
from latentsight.index.home import Home
from latentsight.index.ingest import ingest_paths
from latentsight.index.manager import build_index, delete_images, status
from latentsight.index.search import Searcher
from sqlalchemy import func, select

from tests.imagegen import write_folder
from tests.index.crashkit import copy_model_home


def test_ingest_delete_rebuild_search_keep_the_invariants(trained_home, tmp_path_factory):
    pool_dir = write_folder(tmp_path_factory.mktemp("pool"), per_label=4, seed=900)
    pool = sorted(pool_dir.rglob("*.png"))
    sha = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in pool}
    seed_dir = tmp_path_factory.mktemp("seed")
    shutil.copy(pool[0], seed_dir / "seed.png")
    template = tmp_path_factory.mktemp("template") / "home"
    copy_model_home(trained_home, template, seed_dir)  # one image, model, index

    class Machine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.dir = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
            shutil.copytree(template, self.dir / "home")
            self.home = Home(self.dir / "home")
            self.model = self.home.catalog.model()
            self.expected = {sha[pool[0]]}
            self.folders: list[Path] = []
            self.steps = 0

        def teardown(self) -> None:
            self.home.close()
            shutil.rmtree(self.dir, ignore_errors=True)

        def _folder(self, picks: list[int], bad: bool) -> Path:
            self.steps += 1
            folder = self.dir / f"in{self.steps}"
            folder.mkdir()
            for j, i in enumerate(picks):
                shutil.copy(pool[i], folder / f"{j}_{pool[i].parent.name}_{pool[i].name}")
            if bad:
                (folder / "broken.png").write_bytes(pool[0].read_bytes()[:40])
            return folder

        @rule(picks=st.lists(st.integers(0, len(pool) - 1), min_size=1, max_size=6),
              bad=st.booleans())
        def ingest(self, picks: list[int], bad: bool) -> None:
            folder = self._folder(picks, bad)
            self.folders.append(folder)
            rep = ingest_paths(self.home, [folder], progress=False, workers=0)
            new = {sha[pool[i]] for i in picks} - self.expected
            assert rep.added == len(new)
            assert rep.added + rep.duplicates == len(picks)
            assert len(rep.failed) == int(bad)
            self.expected |= new

        @precondition(lambda self: self.folders)
        @rule(which=st.integers(0, 100))
        def reingest(self, which: int) -> None:
            folder = self.folders[which % len(self.folders)]
            before = self.home.catalog.count_images()
            rep = ingest_paths(self.home, [folder], progress=False, workers=0)
            # files deleted from the catalog since come back; nothing is added twice
            files = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*_*")}
            assert rep.added == len(files - self.expected)
            self.expected |= files
            assert self.home.catalog.count_images() == before + rep.added

        @rule(data=st.data())
        def delete(self, data: st.DataObject) -> None:
            ids = self.home.catalog.image_ids()
            if not ids:
                return
            chosen = data.draw(st.lists(st.sampled_from(ids), max_size=3, unique=True))
            gone = {r.sha256 for r in self.home.catalog.images(ids=chosen)}
            assert delete_images(self.home, chosen)["deleted"] == len(chosen)
            self.expected -= gone

        @rule()
        def rebuild(self) -> None:
            build_index(self.home, self.model, device="cpu", progress=False, workers=0)

        @rule(q=st.integers(0, len(pool) - 1), k=st.integers(1, 8))
        def search(self, q: int, k: int) -> None:
            hits = Searcher(self.home, device="cpu").search(str(pool[q]), k=k)
            ids = set(self.home.catalog.image_ids())
            assert len(hits) == min(k, len(ids))
            assert all(h.id in ids for h in hits)
            if sha[pool[q]] in self.expected:  # an image in the catalog finds itself first
                assert self.home.catalog.image(hits[0].id).sha256 == sha[pool[q]]

        @invariant()
        def catalog_is_what_we_expect(self) -> None:
            if not hasattr(self, "home"):
                return
            with self.home.catalog.session() as s:
                n_distinct = s.scalar(select(func.count(func.distinct(ImageRow.sha256))))
            rows = self.home.catalog.images()
            assert n_distinct == len(rows)
            assert {r.sha256 for r in rows} == self.expected

        @invariant()
        def index_matches_catalog(self) -> None:
            if not hasattr(self, "home"):
                return
            st_ = status(self.home, self.model)
            assert st_.ok and st_.ntotal == st_.catalog_images, st_

    run_state_machine_as_test(Machine, settings=settings(
        max_examples=12, stateful_step_count=10, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck)))
