"""Library code logs through `logging`; a script silences it with a level, the CLI with -q."""

from __future__ import annotations

import logging

import pytest
from PIL import Image
from typer.testing import CliRunner

from latentsight.cli import app
from tests.imagegen import normal_textures

runner = CliRunner()


@pytest.fixture()
def unfinished_scan(own_anomaly_home, tmp_path):
    """A folder of 3 images and a function that leaves a scan over it 'running' (resumable),
    in a private copy of the session's scanning home (the scans it records stay there)."""
    anomaly_home = own_anomaly_home
    from latentsight.index.catalog import ScanRow
    from latentsight.index.scan import scan_paths

    folder = tmp_path / "few"
    folder.mkdir()
    for i, img in enumerate(normal_textures(3, seed=90)):
        Image.fromarray(img).save(folder / f"{i}.png")

    def make() -> int:
        s = scan_paths(anomaly_home, [folder], model="scan-test", device="cpu", progress=False,
                       k_neighbors=0)
        with anomaly_home.catalog.session() as session:
            session.get(ScanRow, s.scan_id).status = "running"  # as if killed before the end
        return s.scan_id

    return folder, make


def _resume(home, folder):
    from latentsight.index.scan import scan_paths

    return scan_paths(home, [folder], model="scan-test", device="cpu", progress=False,
                      k_neighbors=0, resume=True)


def test_resume_lines_are_log_records_a_script_can_silence(own_anomaly_home, unfinished_scan,
                                                            caplog):
    anomaly_home = own_anomaly_home
    folder, make = unfinished_scan
    scan_id = make()
    with caplog.at_level(logging.INFO, logger="latentsight"):
        assert _resume(anomaly_home, folder).scan_id == scan_id
    lines = [r for r in caplog.records if "resuming scan" in r.getMessage()]
    assert [r.name for r in lines] == ["latentsight.index.scan"]
    assert lines[0].levelno == logging.INFO
    assert f"resuming scan {scan_id}: 3 image(s) already done" in lines[0].getMessage()

    make()
    caplog.clear()
    logger = logging.getLogger("latentsight")
    before = logger.level
    logger.setLevel(logging.WARNING)  # what a script does to keep its output clean
    try:
        _resume(anomaly_home, folder)
    finally:
        logger.setLevel(before)
    assert not [r for r in caplog.records if "resuming scan" in r.getMessage()]


def test_cli_quiet_silences_resume_lines(own_anomaly_home, unfinished_scan):
    anomaly_home = own_anomaly_home
    folder, make = unfinished_scan
    args = ["scan", str(folder), "--resume", "--neighbors", "0", "--home", str(anomaly_home.root),
            "--model", "scan-test", "--device", "cpu"]
    scan_id = make()
    loud = runner.invoke(app, args)
    assert loud.exit_code in (0, 1), loud.output
    assert f"resuming scan {scan_id}: 3 image(s) already done" in loud.stderr
    make()
    quiet = runner.invoke(app, ["-q", *args])
    assert quiet.exit_code == loud.exit_code, quiet.output
    assert "resuming scan" not in quiet.stderr
    assert "scored" in quiet.stdout  # results still reach stdout


def test_cli_formats_warnings_with_their_level(capsys):
    from latentsight.cli.output import configure

    configure()
    try:
        logging.getLogger("latentsight.index.manager").warning("could not drop %s", "x")
        logging.getLogger("latentsight.index.manager").debug("hidden")
        err = capsys.readouterr().err
        assert "warning: could not drop x" in err and "hidden" not in err
        configure(verbose=True)
        logging.getLogger("latentsight.index.manager").debug("shown")
        assert "shown" in capsys.readouterr().err
    finally:
        configure()
