"""Folder scans through the CLI: exit statuses, --json, reports, bad files, --resume."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from latentsight.training.defects import paste_defect
from PIL import Image
from typer.testing import CliRunner

from latentsight.cli import app
from tests.badfiles import make_corpus
from tests.imagegen import normal_textures

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, list(args), catch_exceptions=False)
    return res.exit_code, res.stdout, res.stderr


@pytest.fixture(scope="module")
def scan_dir(tmp_path_factory) -> Path:
    """6 normal textures, 4 with a pasted defect, one wide image, and 3 broken files."""
    d = tmp_path_factory.mktemp("incoming")
    rng = np.random.default_rng(3)
    for i, img in enumerate(normal_textures(6, seed=70)):
        Image.fromarray(img).save(d / f"normal_{i}.png")
    for i, img in enumerate(normal_textures(4, seed=71)):
        bad, _ = paste_defect(img, ("scratch", "spot")[i % 2], rng, area=0.1)
        Image.fromarray(bad).save(d / f"defect_{i}.png")
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    sub = d / "sub"
    sub.mkdir()
    for name in ("truncated.jpg", "text.jpg", "zero.jpg"):
        (sub / name).write_bytes(corpus[name][0].read_bytes())
    (d / "notes.txt").write_text("not an image")
    return d


def home_args(home) -> list[str]:
    return ["--home", str(home.root), "--model", "scan-test", "--device", "cpu"]


def test_scan_flags_defects_reports_bad_files_and_exits_1(anomaly_home, scan_dir, tmp_path):
    report = tmp_path / "report"
    code, out, errout = cli("scan", str(scan_dir), "--json", "--report", str(report),
                            *home_args(anomaly_home))
    assert code == 1, errout
    rows = json.loads(out)
    assert len(rows) == 10
    assert set(rows[0]) == {"path", "sha256", "score", "anomalous", "threshold"}
    flagged = {Path(r["path"]).name for r in rows if r["anomalous"]}
    assert sum(n.startswith("defect_") for n in flagged) >= 3
    for name in ("truncated.jpg", "text.jpg", "zero.jpg"):
        assert re.search(rf"failed: .*{re.escape(name)}: \S", errout), errout
    # the catalog recorded the scan and every image, bad files with their reason
    con = sqlite3.connect(anomaly_home.root / "catalog.db")
    scan_id, status, n_flagged, n_failed = con.execute(
        "select id, status, n_flagged, n_failed from scans order by id desc").fetchone()
    assert (status, n_flagged, n_failed) == ("done", len(flagged), 3)
    assert con.execute("select count(*) from scan_results where scan_id=?",
                       (scan_id,)).fetchone()[0] == 13
    con.close()
    # the report: its files exist and report.html references only files it wrote
    html = (report / "report.html").read_text()
    assert (report / "scores.csv").read_text().count("\n") == 14  # header + 13
    heatmaps = sorted(p.name for p in (report / "heatmaps").iterdir())
    assert len(heatmaps) == len(flagged)
    refs = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert refs, "report.html shows no images"
    for ref in refs:
        assert "://" not in ref and not ref.startswith("/"), ref
        assert (report / ref).is_file(), ref
    assert "<svg" in html and "threshold" in html
    assert any(r.startswith("neighbors/") for r in refs)  # nearest normal images shown


def test_exit_0_when_nothing_is_flagged(anomaly_home, scan_dir):
    code, out, errout = cli("scan", str(scan_dir), "--threshold", "1e9",
                            *home_args(anomaly_home))
    assert code == 0, errout
    assert "0 flagged" in out


def test_fpr_option_changes_the_threshold(anomaly_home, scan_dir):
    _, out_lo, _ = cli("scan", str(scan_dir / "normal_0.png"), "--fpr", "0.5", "--json",
                       *home_args(anomaly_home))
    _, out_hi, _ = cli("scan", str(scan_dir / "normal_0.png"), "--fpr", "0.01", "--json",
                       *home_args(anomaly_home))
    assert json.loads(out_lo)[0]["threshold"] < json.loads(out_hi)[0]["threshold"]


def test_errors_exit_2(anomaly_home, tmp_path):
    code, _, errout = cli("scan", str(tmp_path / "missing"), *home_args(anomaly_home))
    assert code == 2 and "no such file or folder" in errout
    code, _, errout = cli("scan", str(tmp_path), "--fpr", "0.01", "--threshold", "2",
                          *home_args(anomaly_home))
    assert code == 2 and "either --fpr or --threshold" in errout


def test_eval_anomaly_reports_auroc_and_achieved_fpr(anomaly_home):
    code, out, errout = cli("eval", "anomaly", "--normal-label", "good", "--json",
                            *home_args(anomaly_home))
    assert code == 0, errout
    res = json.loads(out)
    assert res["n_anomalous"] == 12 and res["n_normal"] == 8  # training images left out
    assert res["auroc"] >= 0.8
    # the same images scored here, the metrics computed independently with scikit-learn
    from latentsight.embedder.images import decode_file
    from latentsight.index.manager import load_scorer
    from sklearn.metrics import average_precision_score, confusion_matrix, f1_score

    row = anomaly_home.catalog.model("scan-test")
    encoder, scorer = load_scorer(anomaly_home, row, "cpu")
    train_ids = set(row.metrics["scoring"]["train_ids"])
    rows = [r for r in anomaly_home.catalog.images(labeled_only=True) if r.id not in train_ids]
    pixels = [decode_file(r.path, mode=encoder.mode).pixels for r in rows]
    scores = np.asarray([scorer.decision_function([px])[0] for px in pixels])
    y = np.asarray([int(r.label != "good") for r in rows])
    pred = (scores > res["threshold"]).astype(int)
    tn, fp, _fn, _tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    assert res["aupr"] == pytest.approx(average_precision_score(y, scores), abs=1e-9)
    assert res["f1"] == pytest.approx(f1_score(y, pred, zero_division=0.0), abs=1e-9)
    assert res["fpr"] == pytest.approx(fp / (fp + tn), abs=1e-9)
    assert res["threshold"] == pytest.approx(float(scorer.threshold_))


def test_resume_after_a_kill_does_not_redo_finished_images(anomaly_home, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for i, img in enumerate(normal_textures(400, seed=80)):
        Image.fromarray(img).save(folder / f"{i:03d}.png")
    cmd = [sys.executable, "-m", "latentsight", "scan", str(folder), *home_args(anomaly_home)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = anomaly_home.root / "catalog.db"
    done_before = 0
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            con = sqlite3.connect(db, timeout=30)
            row = con.execute("select id from scans where status='running' and paths like ?",
                              (f"%{folder.name}%",)).fetchone()
            if row:
                done_before = con.execute("select count(*) from scan_results where scan_id=?",
                                          (row[0],)).fetchone()[0]
            con.close()
            if done_before >= 16:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 16 <= done_before < 400, f"{done_before} images scored before the kill"
    code, out, errout = cli("scan", str(folder), "--resume", "--json", *home_args(anomaly_home))
    assert code in (0, 1), errout
    m = re.search(r"resuming scan (\d+): (\d+) image\(s\) already done", errout)
    assert m and int(m.group(2)) >= done_before, errout
    assert len(json.loads(out)) == 400
    con = sqlite3.connect(db)
    paths = [r[0] for r in con.execute("select path from scan_results where scan_id=?",
                                       (int(m.group(1)),))]
    status = con.execute("select status from scans where id=?", (int(m.group(1)),)).fetchone()
    con.close()
    assert len(paths) == len(set(paths)) == 400 and status == ("done",)


def test_train_normal_label_calibrates_on_held_out_images_only(own_anomaly_home):
    code, out, errout = cli("train", "--normal-label", "good", "--epochs", "1", "--image-size",
                            "16", "--latent-dim", "16", "--batch-size", "16", "--name",
                            "cli-scanner", "--json", "--device", "cpu", "--home",
                            str(own_anomaly_home.root))
    assert code == 0, errout
    res = json.loads(out)
    assert res["threshold"] == 1.0 and res["n_calib"] == 8 and res["n_train"] == 32
    cfg = json.loads((own_anomaly_home.root / "models" / "cli-scanner" / "config.json").read_text())
    state = cfg["scoring"]
    assert not set(state["train_ids"]) & set(state["calib_ids"])
    assert state["normal_label"] == "good" and len(state["calibration_scores_"]) == 8
    # a scan model keeps its own recipe (issue 14 changed the whole-image default only)
    assert cfg["config"]["pixel_pca"] == 0 and cfg["train"]["crops"]
    assert (cfg["train"]["augment"], cfg["train"]["jitter"], cfg["train"]["noise"]) == (
        True, 0.0, 0.0)
    assert (own_anomaly_home.root / "models" / "cli-scanner" / "scoring.safetensors").is_file()


def test_train_normal_label_star_makes_a_background_model_of_every_image(own_anomaly_home):
    """`--normal-label '*'`: trained and calibrated on every real image (both labels), says
    its threshold is not for scans, and serves `index build --anomaly` as a scanning model."""
    home = own_anomaly_home
    args = ("--device", "cpu", "--home", str(home.root))
    code, out, errout = cli("train", "--normal-label", "*", "--epochs", "1", "--image-size",
                            "16", "--latent-dim", "16", "--batch-size", "16", "--name",
                            "cli-background", *args)
    assert code == 0, errout
    n = home.catalog.count_images()
    state = json.loads((home.root / "models" / "cli-background" / "config.json").read_text()
                       )["scoring"]
    used = set(state["train_ids"]) | set(state["calib_ids"])
    assert state["normal_label"] == "*" and used == set(home.catalog.image_ids())
    assert {r.label for r in home.catalog.images(ids=sorted(used))} == {"good", "checker"}
    assert f"trained cli-background on {len(state['train_ids'])} images;" in out
    assert "not separate defects" in errout and "index build --anomaly cli-background" in errout
    code, out, errout = cli("index", "build", "--model", "scan-test", "--anomaly",
                            "cli-background", "--workers", "0", "--json", *args)
    assert code == 0, errout
    assert json.loads(out)["anomaly_ntotal"] == n
    # scanning with it works but warns (cli-background is the active model now)
    folder = home.root.parent / "to-scan"
    folder.mkdir()
    first = home.catalog.images()[0]
    from latentsight.index.paths import from_catalog

    (folder / "a.png").write_bytes(Path(from_catalog(first.path)).read_bytes())
    code, out, errout = cli("scan", str(folder), *args)
    assert code in (0, 1), errout
    assert "background model" in errout and "--normal-label LABEL" in errout


def test_train_scorer_and_contamination_options(own_anomaly_home):
    args = ("train", "--normal-label", "good", "--epochs", "1", "--image-size", "16",
            "--latent-dim", "16", "--batch-size", "16", "--json", "--device", "cpu",
            "--home", str(own_anomaly_home.root))
    code, out, errout = cli(*args, "--name", "cli-knn", "--scorer", "knn",
                            "--contamination", "0.25")
    assert code == 0, errout
    state = json.loads((own_anomaly_home.root / "models" / "cli-knn" / "config.json").read_text()
                       )["scoring"]
    assert state["name"] == "knn" and state["params"]["contamination"] == 0.25
    # the threshold flags at most the contaminated quarter of the 8 held-out images, but some
    # (the default --fpr 0.01 flags none of them)
    assert 1 <= sum(s > state["threshold_"] for s in state["calibration_scores_"]) <= 2
    code, _, errout = cli(*args, "--name", "cli-bad", "--scorer", "nope")
    assert code == 2 and "Invalid value for '--scorer'" in errout  # refused when parsed
    code, _, errout = cli("train", "--scorer", "knn", "--epochs", "1", "--home",
                          str(own_anomaly_home.root))
    assert code == 2 and "only apply with --normal-label" in errout


def test_train_prints_geometry_threshold_and_spread(own_anomaly_home):
    code, out, errout = cli("train", "--normal-label", "good", "--epochs", "1", "--image-size",
                            "16", "--latent-dim", "16", "--batch-size", "16", "--name",
                            "cli-geometry", "--device", "cpu", "--home", str(own_anomaly_home.root))
    assert code == 0, errout
    assert "geometry (from the training images, median 32x32 px): scale 1" in out
    assert re.search(r"threshold 1\.000; held-out normal scores: min [\d.]+, median", out)
    # 8 held-out normals cannot resolve the default FPR 0.01: said so, with the achievable one
    assert "cannot resolve FPR 0.01" in errout and "smallest achievable is 0.125" in errout


def test_eval_anomaly_gives_tpr_at_fpr_1_and_5_percent(anomaly_home):
    code, out, errout = cli("eval", "anomaly", "--normal-label", "good", "--json",
                            *home_args(anomaly_home))
    assert code == 0, errout
    at = json.loads(out)["at_fpr"]
    assert set(at) == {"0.01", "0.05"}
    for r in at.values():
        assert 0 <= r["tpr"] <= 1 and 0 <= r["fpr"] <= 1 and "cannot resolve" in r["note"]


def test_model_trained_before_the_detector_still_loads_and_scans(own_anomaly_home, scan_dir):
    """A texture model as stored before this change: no geometry, scale 1.0."""
    code, out, errout = cli("train", "--normal-label", "good", "--epochs", "1", "--image-size",
                            "16", "--latent-dim", "16", "--batch-size", "16", "--name",
                            "old-texture", "--scorer", "texture", "--device", "cpu", "--home",
                            str(own_anomaly_home.root))
    assert code == 0, errout
    row = own_anomaly_home.catalog.model("old-texture")
    cfg_path = own_anomaly_home.root / "models" / "old-texture" / "config.json"
    doc = json.loads(cfg_path.read_text())
    for state in (doc["scoring"], row.metrics["scoring"]):
        state.pop("geometry", None)
        state["params"]["scale"] = 1.0
    cfg_path.write_text(json.dumps(doc))
    own_anomaly_home.catalog.update_model_metrics(row.id, {"scoring": row.metrics["scoring"]})
    code, out, errout = cli("scan", str(scan_dir), "--json", "--home", str(own_anomaly_home.root),
                            "--model", "old-texture", "--device", "cpu")
    assert code in (0, 1), errout
    res = json.loads(out)
    assert len(res) == 10 and all(r["score"] is not None for r in res)
