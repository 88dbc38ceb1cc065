"""The Streamlit dashboard: search, anomaly review, latent map, classes, status."""
