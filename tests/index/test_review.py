"""Review marks -> a refitted threshold: `latentsight train --normal-label L --use-reviews`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from latentsight.index.errors import CatalogError
from latentsight.index.review import best_threshold
from latentsight.index.scan import load_scorer, scan_paths

from tests.cli import run
from tests.homes import copy_home


def test_best_threshold_separates_the_reviews_nearest_the_current_one():
    scores = np.array([0.5, 0.9, 1.2, 1.6, 2.0])
    anomalous = np.array([False, False, False, True, True])
    t = best_threshold(scores, anomalous, current=1.0)  # 1.2 is a false alarm at 1.0
    assert 1.2 <= t < 1.6
    assert best_threshold(scores, anomalous, current=1.3) == 1.3  # already right: kept


def test_reviews_refit_the_threshold_through_the_cli(anomaly_home, tmp_path):
    home = copy_home(anomaly_home, tmp_path / "home")
    with pytest.raises(CatalogError, match="No reviewed scan results"):
        from latentsight.index.review import refit_threshold

        refit_threshold(home, normal_label="good")
    folder = tmp_path / "scan"
    folder.mkdir()
    for r in home.catalog.images(labels=["good"])[:6] + home.catalog.images(labels=["checker"])[:6]:
        shutil.copy(r.path, folder / f"{r.label}-{r.id}.png")
    summary = scan_paths(home, [folder], progress=False)
    results = home.catalog.scan_results(summary.scan_id)
    old = summary.threshold
    goods = sorted((r for r in results if "good" in r.path), key=lambda r: -r.score)
    missed = goods[:2]  # the analyst calls the two most anomalous stripes defects the scan missed
    for r in results:
        if "checker" in r.path:
            home.catalog.set_review(r.id, "defect", "ana")
        elif r in missed:
            home.catalog.set_review(r.id, "missed", "ana")
        else:
            home.catalog.set_review(r.id, "false_alarm", "ana")  # reviewed as normal
    truth = {r.id: "checker" in r.path or r in missed for r in results}
    before = sum((r.score > old) != truth[r.id] for r in results)
    assert before >= 2  # the two stripes score below the model's threshold
    out = json.loads(run("train", "--normal-label", "good", "--use-reviews", "--json",
                         "--home", str(home.root)))
    assert out["old_threshold"] == pytest.approx(old) and out["missed"] == 2
    assert out["errors_before"] == before and out["errors_after"] < before
    assert out["new_threshold"] < min(r.score for r in missed)
    _enc, scorer = load_scorer(home, home.catalog.model("scan-test"), "cpu")
    assert scorer.threshold_ == pytest.approx(out["new_threshold"])
    again = scan_paths(home, [folder], progress=False)  # new scans use the refitted threshold
    assert again.threshold == pytest.approx(out["new_threshold"])


def test_catalog_pages_tags_and_reviews(db_url):
    from latentsight.index.catalog import Catalog, ScanResultRow, ScanRow

    cat = Catalog(db_url)
    ids = cat.add_images([
        {"sha256": f"{i:064x}", "path": f"/x/{i}.png", "byte_size": 1, "width": 8, "height": 8,
         "mode": "L", "format": "PNG", "label": "ab"[i % 2], "source": "s",
         "synthetic": i == 4} for i in range(6)])
    rows, total = cat.page(labels=["a"], limit=2)
    assert total == 3 and [r.id for r in rows] == [ids[0], ids[2]]
    assert cat.page(synthetic=True)[1] == 1 and cat.page(ids=[])[1] == 0
    assert cat.add_tag([ids[1], ids[3]], "scratch") == 2 and cat.add_tag([ids[1]], "scratch") == 0
    assert cat.page(tags=["scratch"])[1] == 2 and cat.all_tags() == ["scratch"]
    assert cat.remove_tag([ids[1]], "scratch") == 1 and cat.tags() == {ids[3]: ["scratch"]}
    with pytest.raises(CatalogError, match="1-255 characters"):
        cat.add_tag([ids[0]], "  ")
    assert cat.distinct_values() == (["a", "b"], ["s"])
    model = cat.add_model(name="m", kind="ae", config={}, checkpoint_path="m",
                          checkpoint_sha256="0" * 64, metrics={})
    with cat.session() as s:
        scan = ScanRow(model_id=model.id, threshold=1.0, paths=["/x"], status="done")
        s.add(scan)
        s.flush()
        res = ScanResultRow(scan_id=scan.id, path="/x/0.png", sha256=f"{0:064x}", score=2.0)
        s.add(res)
        s.flush()
        rid, sid = res.id, scan.id
    assert cat.latest_scores() == {f"{0:064x}": (2.0, rid, sid)}
    cat.set_review(rid, "false_alarm", "ana")
    cat.set_review(rid, "defect", "bo")
    rev = cat.reviews(scan_id=sid)[rid]
    assert (rev.mark, rev.reviewer) == ("defect", "bo")
    assert list(cat.reviews(model_id=model.id)) == [rid]
    with pytest.raises(CatalogError, match="must be one of"):
        cat.set_review(rid, "maybe", "ana")
    cat.set_review(rid, None, "ana")
    assert cat.reviews() == {}
    cat.close()


def test_refit_normals_moves_false_alarms_in_and_defects_out(anomaly_home, tmp_path):
    from PIL import Image

    from tests.imagegen import normal_textures

    home = copy_home(anomaly_home, tmp_path / "home")
    folder = tmp_path / "scan"
    folder.mkdir()
    for i, px in enumerate(normal_textures(6, seed=7)):  # normal, but new to the model
        Image.fromarray(px, mode="L").save(folder / f"new-{i}.png")
    goods = home.catalog.images(labels=["good"])[:2]
    for r in goods + home.catalog.images(labels=["checker"])[:4]:
        shutil.copy(r.path, folder / f"{r.label}-{r.id}.png")
    summary = scan_paths(home, [folder], progress=False)
    results = home.catalog.scan_results(summary.scan_id)
    new = sorted((r for r in results if "new-" in r.path), key=lambda r: -r.score)[:3]
    out_of_set = next(r for r in results if f"good-{goods[0].id}" in r.path)
    for r in results:
        if "checker" in r.path:
            home.catalog.set_review(r.id, "defect", "ana")
    for r in new:
        home.catalog.set_review(r.id, "false_alarm", "ana")
    home.catalog.set_review(out_of_set.id, "missed", "ana")
    run("train", "--normal-label", "good", "--refit-normals", "--home", str(home.root), code=2)
    old_model = home.catalog.model("scan-test")
    old_ratio = np.mean([r.score for r in new]) / summary.threshold
    out = json.loads(run("train", "--normal-label", "good", "--use-reviews", "--refit-normals",
                         "--json", "--home", str(home.root)))
    assert out["refit_normals"] and out["normals_added"] == 3 and out["normals_removed"] == 1
    state = home.catalog.model("scan-test").metrics["scoring"]
    assert goods[0].id not in state["train_ids"] + state["calib_ids"]
    assert len(state["train_ids"]) + len(state["calib_ids"]) == 39
    assert sorted(state["normal_paths_from_reviews"]) == sorted(r.path for r in new)
    assert state["arrays_sha256"] != old_model.metrics["scoring"].get("arrays_sha256")
    again = scan_paths(home, [folder], progress=False)  # new scans use the refitted scorer
    assert again.threshold == pytest.approx(out["new_threshold"])
    rescored = {r.path: r.score for r in home.catalog.scan_results(again.scan_id)}
    new_ratio = np.mean([rescored[r.path] for r in new]) / again.threshold
    assert new_ratio < old_ratio  # the false alarms look more normal to the refitted scorer
    assert out["errors_after"] <= out["errors_before"]
