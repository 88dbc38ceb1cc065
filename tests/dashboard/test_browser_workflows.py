"""The analyst's workflows in a real headless Chromium, on one server and home for the module:
upload and search, open a sample, search a drawn region, start a scan from the page and
review it, mark a false alarm and refit, synthesize with a chosen gate."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest
from latentsight.dashboard import shoot
from latentsight.index.home import Home

from tests.dashboard.conftest import copy_home

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wf_home(tmp_path_factory, anomaly_home) -> Home:
    """A copy of `anomaly_home` (calibrated scan-test, 40 good + 12 checker, 32x32) with
    local vectors, a tiny GAN and a folder to scan under the home's data root."""
    if not shoot.browser_available():
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip(f"{shoot.CHROMIUM} or {shoot.CHROMEDRIVER} not installed")
    pytest.importorskip("selenium")
    from latentsight.index.manager import build_index

    from tests.cli import run

    home = copy_home(anomaly_home, tmp_path_factory.mktemp("wf") / "home")
    build_index(home, home.catalog.model("scan-test"), device="cpu", progress=False, workers=0,
                local=True)
    run("gan", "train", "--steps", "4", "--batch-size", "8", "--g-width", "4", "--d-width", "4",
        "--holdout", "0.25", "--name", "g1", "--device", "cpu", "--home", str(home.root))
    folder = home.root / "data" / "scan"
    folder.mkdir(parents=True)
    for r in home.catalog.images(labels=["good"])[:3] + home.catalog.images(labels=["checker"])[:3]:
        shutil.copy(r.path, folder / f"{r.label}-{r.id}.png")
    return home


@pytest.fixture(scope="module")
def site(wf_home, tmp_path_factory):
    """(url, driver): one dashboard server and one browser for the module."""
    log = tmp_path_factory.mktemp("wf-log") / "dashboard.log"
    with shoot.serve(wf_home.root, log=log) as url, shoot.chromium(height=1400) as driver:
        yield url, driver


def wait_until(check, timeout: float = 90, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_upload_search_open_a_sample_and_search_a_drawn_region(site, wf_home):
    url, driver = site
    query = wf_home.catalog.images(labels=["checker"])[2]
    driver.get(url)
    shoot.wait_for(driver, 'input[type="file"]')[0].send_keys(query.path)
    shoot.wait_for(driver, '[data-testid="stDownloadButton"]')
    shoot.settle(driver)
    assert f"1. #{query.id}" in shoot.page_text(driver)  # the upload finds its own file first
    assert shoot.click_button(driver, "Open")  # on the first hit
    title = shoot.wait_text(driver, rf"#{query.id} · checker")
    assert title, shoot.page_text(driver)[:1000]
    shoot.wait_for(driver, '[data-testid="stPlotlyChart"] .nsewdrag')
    shoot.settle(driver)
    assert shoot.field(driver, "x", "stNumberInput").get_attribute("value") == "8"  # centre
    shoot.drag_box(driver, start=(0.05, 0.05), end=(0.8, 0.8))  # from the top-left corner
    wait_until(lambda: shoot.field(driver, "x", "stNumberInput").get_attribute("value") != "8",
               what="the drawn box in the typed fields")
    shoot.settle(driver)
    x = int(shoot.field(driver, "x", "stNumberInput").get_attribute("value"))
    w = int(shoot.field(driver, "width", "stNumberInput").get_attribute("value"))
    assert x <= 4 and 20 <= w <= 27, (x, w)  # about 3/4 of the 32x32 image's side
    assert shoot.click_button(driver, "Search this region")
    found = shoot.wait_text(driver, r"\d+ results for region \[[\d, ]+\]")
    shoot.settle(driver)
    text = shoot.page_text(driver)
    assert found, text[:2000]
    assert re.search(r"1\. #\d+ · checker · [\d.]+ · box \[\d+, \d+, \d+, \d+\]", text), \
        text[-2000:]  # a checker region finds a checker; each hit says where its match lies
    assert not driver.find_elements("css selector", '[data-testid="stException"]')


def test_scan_from_the_page_review_a_false_alarm_refit_and_synthesize(site, wf_home):
    url, driver = site
    before = {s.id for s in wf_home.catalog.scans()}
    driver.get(f"{url}/anomalies")
    shoot.wait_for(driver, "h1")
    shoot.settle(driver)
    assert shoot.click_text(driver, '[data-testid="stExpander"] summary',
                            "Start a scan on a folder")
    folder = shoot.field(driver, "Folder on the server to scan (absolute path)")
    folder.send_keys(str(wf_home.root / "data" / "scan"))
    assert shoot.click_button(driver, "Scan")
    started = shoot.wait_text(driver, r"scan #\d+: 6 images, \d+ flagged, 0 failed")
    assert started, shoot.page_text(driver)[:2000]
    shoot.settle(driver)
    scan = wf_home.catalog.scans()[0]
    assert scan.id not in before and f"scan #{scan.id}" in started
    assert scan.n_flagged >= 1
    assert shoot.click_text(driver, '[data-testid="stButtonGroup"] button', "false alarm")
    rev = wait_until(lambda: wf_home.catalog.reviews(scan_id=scan.id), what="the review mark")
    assert [r.mark for r in rev.values()] == ["false_alarm"]
    shoot.settle(driver)
    assert shoot.click_text(driver, '[data-testid="stCheckbox"] label',
                            "Also refit the normal set")
    shoot.settle(driver)
    assert shoot.click_button(driver, "Refit the threshold from the reviews")
    done = shoot.wait_text(driver, r"scan-test: threshold [\d.]+ (->|→) [\d.]+ .*"
                                   r"Normal set: 1 false alarm\(s\) joined")
    assert done, shoot.page_text(driver)[-3000:]
    state = wf_home.catalog.model("scan-test").metrics["scoring"]
    assert state["refit_from_reviews"]["refit_normals"]
    assert state["normal_paths_from_reviews"] == [
        wf_home.catalog.scan_result(next(iter(rev))).path]

    # synthesize with a chosen gate
    driver.get(f"{url}/classes")
    shoot.wait_for(driver, "h1")
    shoot.settle(driver)
    shoot.choose(driver, "Plausibility gate", "anomaly scorer of scan-test")
    shoot.settle(driver)
    assert shoot.click_button(driver, "Synthesize")
    made = shoot.wait_text(driver, r"\d+ synthetic '\w+' images added \(\d+ generated.*gate "
                                   r"scan-test\)")
    assert made, shoot.page_text(driver)[:3000]
    n = int(re.match(r"\d+", made).group(0))
    assert wf_home.catalog.count_images(synthetic=True) == n

