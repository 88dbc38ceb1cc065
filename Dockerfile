# The latentsight image: CLI and dashboard. CPU faiss; torch uses CUDA when the host passes a
# GPU through (--device auto).
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LATENTSIGHT_HOME=/var/lib/latentsight
RUN apt-get update && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# One faiss: faiss-cpu (milvus-lite's too). For GPU indexes see the README's "GPU" section.
# EXTRAS="[ray]" builds the image the compose file's Ray head and worker run
ARG EXTRAS=""
RUN pip install ".${EXTRAS}" \
    && useradd --create-home --uid 1000 latentsight \
    && mkdir -p /var/lib/latentsight && chown latentsight /var/lib/latentsight
USER latentsight
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s CMD curl -f http://localhost:8501/_stcore/health || exit 1
CMD ["latentsight", "dashboard", "--host", "0.0.0.0", "--port", "8501"]
