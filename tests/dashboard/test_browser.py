"""The dashboard in a real headless Chromium: `latentsight dashboard` on a loopback port."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from latentsight.dashboard import shoot

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser_ready():
    if not shoot.browser_available():
        if os.environ.get("CI"):
            pytest.fail("CI must install chromium and chromium-driver (see .ci/run)")
        pytest.skip(f"{shoot.CHROMIUM} or {shoot.CHROMEDRIVER} not installed")
    pytest.importorskip("selenium")


def test_pages_load_an_upload_finds_results_and_a_lasso_opens_a_sample(browser_ready, dash_home,
                                                                        tmp_path):
    query = dash_home.catalog.images()[5]
    with shoot.serve(dash_home.root, log=tmp_path / "dashboard.log") as url:
        seen = shoot.tour(url, tmp_path / "shots", query_image=Path(query.path))
    for _slug, title, name in shoot.PAGES:
        page = seen[title]
        assert page["title"], f"{title} did not render: {page['text'][:500]}"
        assert not page["exception"], f"{title} raised: {page['text'][:2000]}"
        assert (tmp_path / "shots" / name).stat().st_size > 5_000
    search = seen["Search"]
    assert f"1. #{query.id}" in search["text"]  # the uploaded file is its own best match
    assert "12 results" in search["text"] and search["images"] >= 1 + 12  # query + k=12 hits
    assert "Flagged" in seen["Anomalies"]["text"]
    lassoed = seen["map lasso"]
    assert lassoed["selected"] > 0, "a lasso on the latent map selected nothing"
    assert lassoed["sample"].startswith("#"), "Open on a selected point did not open its sample"
    assert "Nearest normal images" in lassoed["sample_text"]


def test_a_token_is_asked_for_before_any_page_renders(browser_ready, empty_home, tmp_path,
                                                      monkeypatch):
    """With LATENTSIGHT_DASHBOARD_TOKEN set, the browser sees only the token field until given."""
    import time

    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    monkeypatch.setenv("LATENTSIGHT_DASHBOARD_TOKEN", "browser-s3cret")
    with shoot.serve(empty_home.root, log=tmp_path / "dashboard.log") as url, \
            shoot.chromium() as driver:
        driver.get(url)
        field = shoot.wait_for(driver, 'input[type="password"]')[0]
        shoot.settle(driver)
        assert "latentsight ingest" not in shoot.page_text(driver)
        field.send_keys("wrong", Keys.ENTER)
        shoot.settle(driver)
        deadline = time.monotonic() + 60
        while "Wrong token" not in shoot.page_text(driver) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "Wrong token" in shoot.page_text(driver)
        field = driver.find_element(By.CSS_SELECTOR, 'input[type="password"]')
        field.send_keys(Keys.CONTROL, "a")
        field.send_keys("browser-s3cret", Keys.ENTER)
        deadline = time.monotonic() + 90
        while "latentsight ingest" not in shoot.page_text(driver) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "latentsight ingest" in shoot.page_text(driver)
