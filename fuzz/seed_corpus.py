"""Write the seed corpus for the decode fuzzer: every content case of tests/badfiles.py.

Each seed gets a leading mode byte, as `fuzz_decode.test_one_input` reads one.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.badfiles import make_corpus  # noqa: E402


def main(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    n = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, _expected) in make_corpus(Path(tmp) / "c").items():
            if not path.is_file() or path.is_symlink() or path.stat().st_size > 1 << 20:
                continue
            try:
                data = path.read_bytes()
            except OSError:
                continue
            safe = name.replace("%", "_")
            (out / f"{safe}.seed").write_bytes(b"\x00" + data)
            n += 1
    print(f"{n} seeds in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "fuzz" / "corpus")))
