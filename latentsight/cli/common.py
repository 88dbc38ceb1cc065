"""Options and helpers shared by every command: --home, --db-url, --device, output, errors."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from latentsight.embedder.errors import LatentsightError
from latentsight.index.home import Home
from latentsight.settings import ENV_DB_URL, ENV_DEVICE, ENV_HOME, Settings

HomeOpt = Annotated[
    Path | None,
    typer.Option("--home", envvar=ENV_HOME, help="Home folder (catalog, models, indexes, "
                 "reports). Default ~/.latentsight.", show_default=False),
]
DbUrlOpt = Annotated[
    str | None,
    typer.Option("--db-url", envvar=ENV_DB_URL, help="SQLAlchemy URL of the catalog, e.g. "
                 "postgresql+psycopg://user@host/db. Default: a SQLite file in the home.",
                 show_default=False),
]
DeviceOpt = Annotated[
    str,
    typer.Option("--device", envvar=ENV_DEVICE, help="auto (CUDA when torch sees a GPU), "
                 "cpu or cuda."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (for scripts).")]
ModelOpt = Annotated[
    str | None,
    typer.Option("--model", help="Model name (see `latentsight models list`). Default: the "
                 "active model.", show_default=False),
]

EXIT_OK, EXIT_FOUND, EXIT_ERROR = 0, 1, 2

# Milvus Lite logs each failure to start with its traceback (through Python's last-resort
# handler); the StoreError that follows says the same in one line.
_milvus_lite_log = logging.getLogger("milvus_lite")
_milvus_lite_log.addHandler(logging.NullHandler())
_milvus_lite_log.propagate = False

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Common:
    """The options every command shares: --json, --device, --home, --db-url."""

    json: bool = False
    device: str = "auto"
    home: Path | None = None
    db_url: str | None = None

    def open_home(self) -> Home:
        return open_home(self.home, self.db_url)


_COMMON = {  # parameter name -> (annotation, default, Common field)
    "json_out": (JsonOpt, False, "json"),
    "device": (DeviceOpt, "auto", "device"),
    "home": (HomeOpt, None, "home"),
    "db_url": (DbUrlOpt, None, "db_url"),
}


def common_options(*, json: bool = True, device: bool = True,
                   device_default: str = "auto") -> Callable[[F], F]:
    """Give a command the shared option tail; it receives them as `opts: Common`.

    `--home` and `--db-url` always; `--json` and `--device` unless turned off.
    Apply below `@app.command()` and above `@handle_errors`.
    """
    wanted = [n for n in _COMMON if (n != "json_out" or json) and (n != "device" or device)]

    def decorate(fn: F) -> F:
        sig = inspect.signature(fn, eval_str=True)
        own = [p for name, p in sig.parameters.items() if name != "opts"]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=_COMMON[name][0],
                              default=device_default if name == "device" else _COMMON[name][1])
            for name in wanted
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            given = {_COMMON[n][2]: kwargs.pop(n) for n in wanted if n in kwargs}
            return fn(*args, **kwargs, opts=Common(**given))

        wrapper.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY) if p.kind == p.VAR_KEYWORD else p
            for p in own] + extra)
        return wrapper  # type: ignore[return-value]

    return decorate


def open_home(home: Path | None, db_url: str | None) -> Home:
    return Settings.resolve(home, db_url).open_home()


def echo_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def safe_text(text: object) -> str:
    """`text` with every unprintable character escaped as repr() would (\\n, \\x1b, \\udcff).

    A file name holding a newline or an escape sequence then prints as one
    inert line: it can neither forge a "failed:" line nor drive the terminal.
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def err(msg: str) -> None:
    typer.echo(safe_text(msg), err=True)


def _one_line(e: BaseException) -> str:
    """An exception's text as one terminal-safe line (never the parameters SQLAlchemy lists)."""
    orig = getattr(e, "orig", None)
    text = str(orig if orig is not None else e).strip()
    return safe_text((text.splitlines() or [type(e).__name__])[0])


def handle_errors(fn: F) -> F:
    """Turn every error a user can cause into one clear line on stderr and exit status 2.

    latentsight's own errors, bad values, and what the system refuses (a full
    disk, a read-only folder, a database that cannot be written): no traceback.
    """
    from sqlalchemy.exc import SQLAlchemyError

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LatentsightError as e:
            err(f"error: {_one_line(e)}")
            raise typer.Exit(EXIT_ERROR) from None
        except ValueError as e:
            err(f"error: {_one_line(e)}")
            raise typer.Exit(EXIT_ERROR) from None
        except OSError as e:  # ENOSPC, EACCES, EROFS, EIO, ...: name the file and the reason
            where = f"{e.filename}: " if e.filename else ""
            err(f"error: {where}{e.strerror or _one_line(e)}")
            raise typer.Exit(EXIT_ERROR) from None
        except SQLAlchemyError as e:
            err(f"error: the catalog database refused the operation: {_one_line(e)}")
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            err("interrupted; everything committed so far is kept (re-run to continue)")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def show(rows: list[dict[str, Any]], columns: list[str], *, as_json: bool, empty: str) -> None:
    """Rows as JSON (all fields), or as a table of `columns`, or the `empty` hint."""
    if as_json:
        echo_json(rows)
    elif not rows:
        typer.echo(empty)
    else:
        typer.echo(table(rows, columns))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain fixed-width table for people."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return safe_text(v)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()
