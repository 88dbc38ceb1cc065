"""Who may use the dashboard, and which server folders it may read.

- `LATENTSIGHT_DASHBOARD_TOKEN`: when set, every page asks for it before it
  renders anything (`gate()`, called by app.py ahead of the navigation); the
  token is compared in constant time and remembered for the browser session.
  `latentsight dashboard` refuses to listen on a non-loopback address
  without one (`needs_token`).
- `LATENTSIGHT_DATA_ROOTS`: the folders (separated by `os.pathsep`) under
  which a visitor may ingest or scan; by default the home's `data/` folder.
  A typed folder is resolved (symbolic links and `..` followed) before it is
  compared, so `data/../../etc` or a link out of a root is refused
  (`check_folder`).

Streamlit-free except `gate()`, so the rules are tested without a browser.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from latentsight.index.errors import CatalogError
from latentsight.index.home import Home

TOKEN_ENV = "LATENTSIGHT_DASHBOARD_TOKEN"
ROOTS_ENV = "LATENTSIGHT_DATA_ROOTS"
DATA_DIR = "data"  # the default data root, inside the home


def token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


def token_ok(given: str | None, expected: str | None = None) -> bool:
    """Whether `given` is the dashboard token (always True when no token is configured)."""
    expected = token() if expected is None else expected
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost; anything else (0.0.0.0 included) is reachable by others."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def needs_token(host: str) -> bool:
    """Serving on `host` without a token would expose the catalog's images to others."""
    return not is_loopback(host) and not token()


def data_roots(home: Home) -> list[Path]:
    """The folders visitors may ingest or scan under (resolved)."""
    raw = os.environ.get(ROOTS_ENV)
    roots = [p for p in raw.split(os.pathsep) if p.strip()] if raw else [home.root / DATA_DIR]
    return [Path(os.path.realpath(os.path.expanduser(p))) for p in roots]


def check_folder(home: Home, folder: str | Path) -> Path:
    """The resolved folder when it lies under a data root; a CatalogError naming the roots."""
    real = Path(os.path.realpath(os.path.expanduser(os.fspath(folder))))
    roots = data_roots(home)
    if not any(real == r or r in real.parents for r in roots):
        shown = os.pathsep.join(str(r) for r in roots)
        msg = (f"{os.fspath(folder)!r} is outside the data roots ({shown}); the dashboard only "
               f"reads folders under them (set {ROOTS_ENV} to change them)")
        raise CatalogError(msg)
    return real


def gate() -> None:
    """Stop the page unless this browser session gave the token (no-op without a token)."""
    import streamlit as st

    expected = token()
    if not expected or st.session_state.get("_latentsight_token_ok"):
        return
    st.title("latentsight")
    given = st.text_input("Access token", type="password", key="_latentsight_token")
    if given and token_ok(given, expected):
        st.session_state["_latentsight_token_ok"] = True
        st.rerun()
    if given:
        st.error("Wrong token.")
    st.stop()


__all__ = ["ROOTS_ENV", "TOKEN_ENV", "check_folder", "data_roots", "gate", "is_loopback",
           "needs_token", "token_ok"]
