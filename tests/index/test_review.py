"""Review marks -> a refitted threshold: `latentsight train --normal-label L --use-reviews`."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from latentsight.index.errors import CatalogError
from latentsight.index.home import Home
from latentsight.index.review import best_threshold
from latentsight.index.scan import load_scorer, scan_paths

from tests.cli import run


def test_best_threshold_separates_the_reviews_nearest_the_current_one():
    scores = np.array([0.5, 0.9, 1.2, 1.6, 2.0])
    anomalous = np.array([False, False, False, True, True])
    t = best_threshold(scores, anomalous, current=1.0)  # 1.2 is a false alarm at 1.0
    assert 1.2 <= t < 1.6
    assert best_threshold(scores, anomalous, current=1.3) == 1.3  # already right: kept


def test_reviews_refit_the_threshold_through_the_cli(anomaly_home, tmp_path):
    anomaly_home.catalog.engine.dispose()
    home = Home(shutil.copytree(anomaly_home.root, tmp_path / "home"))
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
