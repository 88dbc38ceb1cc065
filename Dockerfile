# The latentsight image: CLI and dashboard. CPU by default; on a CUDA host use a CUDA base
# image instead and faiss-gpu / torch with CUDA are picked up (--device auto).
FROM python:3.11.10-slim-bookworm

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 LATENTSIGHT_HOME=/var/lib/latentsight
RUN apt-get update && apt-get install -y --no-install-recommends curl libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
# milvus-lite pulls faiss-cpu into the same `faiss` folder: reinstall faiss-gpu last (see Makefile)
# EXTRAS="[ray]" builds the image the compose file's Ray head and worker run
ARG EXTRAS=""
RUN pip install ".${EXTRAS}" \
    && if [ "$(uname -m)" = x86_64 ]; then pip install --force-reinstall --no-deps "faiss-gpu>=1.14"; fi \
    && useradd --create-home --uid 1000 latentsight \
    && mkdir -p /var/lib/latentsight && chown latentsight /var/lib/latentsight
USER latentsight
EXPOSE 8501
HEALTHCHECK --interval=30s --timeout=5s CMD curl -f http://localhost:8501/_stcore/health || exit 1
CMD ["latentsight", "dashboard", "--host", "0.0.0.0", "--port", "8501"]
