"""Entry point: `latentsight dashboard` runs `streamlit run dashboard/app.py`.

The home comes from LATENTSIGHT_HOME / LATENTSIGHT_DB_URL; see dashboard/loaders.py.
"""

import sys
from pathlib import Path

# Run from a checkout, the pages import that checkout's `latentsight` (the folder beside this
# one); installed, this file is inside the package and the installed one is found as usual.
_ROOT = Path(__file__).resolve().parents[1]
if (_ROOT / "latentsight" / "__init__.py").is_file():
    sys.path.insert(0, str(_ROOT))

import streamlit as st  # noqa: E402
from latentsight.dashboard import access, loaders  # noqa: E402

st.set_page_config(page_title="latentsight", page_icon=":material/image_search:", layout="wide")
access.gate()  # LATENTSIGHT_DASHBOARD_TOKEN, before any page renders (dashboard/access.py)

pages = [
    st.Page("views/search.py", title="Search", icon=":material/search:", url_path="search",
            default=True),
    st.Page("views/anomalies.py", title="Anomalies", icon=":material/warning:",
            url_path="anomalies"),
    st.Page("views/latent_map.py", title="Latent map", icon=":material/scatter_plot:",
            url_path="latent_map"),
    st.Page("views/classes.py", title="Classes & synthesis", icon=":material/category:",
            url_path="classes"),
    st.Page("views/status.py", title="Status", icon=":material/monitor_heart:",
            url_path="status"),
    st.Page("views/sample.py", title="Sample", icon=":material/image:", url_path="sample"),
]
nav = st.navigation(pages)
st.sidebar.caption(f"Home: `{loaders.home_location()[0]}`")
nav.run()
