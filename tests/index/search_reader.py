"""A search loop for the concurrency tests, run in threads or as its own process.

    python -m tests.index.search_reader HOME READY_FILE STOP_FILE OUT_JSON QUERY...

Searches until STOP_FILE exists (and once more after), opening a fresh
Searcher every few queries too (that path checks index freshness), and
writes what it saw to OUT_JSON: searches, failures (with messages),
generations seen, hits that were not catalog images.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path


def search_loop(home_dir: str, queries: list[str], stop: threading.Event | Path,
                ready: threading.Event | Path | None = None) -> dict:
    import torch
    from latentsight.index.home import Home
    from latentsight.index.search import Searcher

    torch.set_num_threads(1)
    home = Home(home_dir)
    out = {"searches": 0, "failures": [], "generations": [], "foreign_hits": 0}
    searcher = Searcher(home, device="cpu")
    if isinstance(ready, Path):
        ready.write_text("ready")
    elif ready is not None:
        ready.set()

    def stopped() -> bool:
        return stop.exists() if isinstance(stop, Path) else stop.is_set()

    last_round = False
    while True:
        last_round = stopped()
        for i, q in enumerate(queries):
            try:
                if i == 0 and out["searches"] % 10 == 0:
                    Searcher(home, device="cpu")  # a reader that starts mid-ingest
                hits = searcher.search(q, k=5)
                known = set(home.catalog.image_ids())
                out["foreign_hits"] += sum(h.id not in known for h in hits)
                if not hits:
                    out["failures"].append("no hits")
            except Exception as e:  # noqa: BLE001 - the test counts every failure
                out["failures"].append(f"{type(e).__name__}: {e}")
            out["searches"] += 1
            gen = searcher.index_row.generation
            if not out["generations"] or out["generations"][-1] != gen:
                out["generations"].append(gen)
        if last_round:
            break
    home.close()
    return out


def main(argv: list[str]) -> None:
    home, ready, stop, out, *queries = argv
    res = search_loop(home, queries, Path(stop), Path(ready))
    Path(out).write_text(json.dumps(res))


if __name__ == "__main__":
    main(sys.argv[1:])
