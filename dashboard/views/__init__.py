"""The dashboard pages (one st.Page each, listed in dashboard/app.py)."""
