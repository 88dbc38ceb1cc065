"""CLI options: choices checked at parse time against the library's registries, the shared
option tail, and -v/-q."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from latentsight.cli import app, choices

runner = CliRunner()


def _out(res) -> str:
    return res.output + (res.stderr if res.stderr_bytes else "")


def test_choices_match_the_library_registries():
    from latentsight.embedder.models import REGISTRY
    from latentsight.embedder.scoring import SCORERS
    from latentsight.index.backends import BACKENDS
    from latentsight.index.store import METRICS
    from latentsight.training.gan.train import LOSSES
    from latentsight.training.train import AUX_OBJECTIVES

    def values(enum) -> list[str]:
        return sorted(m.value for m in enum)

    assert values(choices.Backend) == sorted(BACKENDS)
    assert values(choices.Metric) == sorted(METRICS)
    assert values(choices.GanLoss) == sorted(LOSSES)
    assert values(choices.ModelKind) == sorted(REGISTRY)
    assert values(choices.Aux) == sorted(AUX_OBJECTIVES)
    assert values(choices.Scorer) == sorted(SCORERS)


@pytest.mark.parametrize(("args", "option"), [
    (["gan", "train", "--loss", "lsgan"], "--loss"),
    (["train", "--normal-label", "good", "--scorer", "nope"], "--scorer"),
    (["train", "--model", "resnet"], "--model"),
    (["index", "build", "--backend", "qdrant"], "--backend"),
    (["index", "build", "--metric", "hamming"], "--metric"),
    (["index", "verify", "--backend", "qdrant"], "--backend"),
])
def test_a_bad_choice_is_refused_when_parsed_before_the_home_is_touched(tmp_path, args, option):
    home = tmp_path / "home"
    res = runner.invoke(app, [*args, "--home", str(home)])
    assert res.exit_code == 2, _out(res)
    assert f"Invalid value for '{option}'" in _out(res)
    assert not home.exists()


@pytest.mark.parametrize(("command", "tail"), [
    (["search"], ["--json", "--device", "--home", "--db-url"]),
    (["scan"], ["--json", "--device", "--home", "--db-url"]),
    (["train"], ["--json", "--device", "--home", "--db-url"]),
    (["index", "build"], ["--json", "--device", "--home", "--db-url"]),
    (["ingest"], ["--json", "--home", "--db-url"]),
    (["models", "use"], ["--home", "--db-url"]),
    (["delete"], ["--json", "--home", "--db-url"]),
])
def test_commands_share_one_option_tail(command, tail):
    res = runner.invoke(app, [*command, "--help"], terminal_width=200)
    assert res.exit_code == 0
    for opt in tail:
        assert opt in res.output, (command, opt)


def test_verbose_and_quiet_together_are_an_error():
    res = runner.invoke(app, ["-v", "-q", "models", "list"])
    assert res.exit_code == 2
    assert "not both" in _out(res)
