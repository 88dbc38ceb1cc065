"""The README's Python example runs as written (paths swapped for a fixture home)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_python_example_runs(tmp_path, trained_home, texture_dir, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "README has no python example"
    code = blocks[0]
    home = tmp_path / "home"
    shutil.copytree(trained_home.root, home)
    incoming = tmp_path / "incoming"
    shutil.copytree(texture_dir, incoming)
    (incoming / "scratches").mkdir()
    shutil.copy(texture_dir / "blobs" / "000.png", incoming / "scratches" / "s_001.png")
    (incoming / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code = code.replace('"~/.latentsight"', repr(str(home)))
    code = code.replace('"incoming/', '"' + str(incoming) + "/")
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    assert "0 added, 49 already there" in out  # the fixture home holds every texture already
    assert "skipped" in out and "broken.png" in out
    assert out.count("blobs") >= 1
