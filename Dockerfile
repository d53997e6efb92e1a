# The browserrl env server (MiniWoB++ over OpenEnv) as a container: a cluster node or a Hugging Face Space.
#   docker build -t browserrl-env .
#   docker run --rm -p 8000:8000 browserrl-env            # then: env=remote env.url=http://HOST:8000
# Settings: PORT (HF Spaces: 7860), MAX_SESSIONS, TASK, IDLE_TIMEOUT; more flags via `docker run ... <cmd>`.
FROM python:3.11-slim-bookworm

# Debian's Chromium: Playwright's own browser download is not needed (nor reachable on closed networks).
RUN apt-get update \
    && apt-get install -y --no-install-recommends chromium fonts-liberation \
    && rm -rf /var/lib/apt/lists/*

# Only the server's dependencies (no torch): same pins as the project.
RUN pip install --no-cache-dir \
    "openenv-core==0.3.0" "browsergym-core==0.14.3" "browsergym-miniwob==0.14.3" "miniwob==1.1.0" \
    "playwright==1.44.0" "uvicorn" "fastapi"

WORKDIR /app
COPY browserrl/env/ browserrl/env/
COPY scripts/serve_env.py scripts/serve_env.py

# Hugging Face Spaces run containers as uid 1000; Chromium runs without its sandbox either way.
RUN useradd --create-home --uid 1000 app
USER app

ENV PORT=8000 MAX_SESSIONS=8 TASK=click-test IDLE_TIMEOUT=900 PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/health')"

CMD ["sh", "-c", "exec python scripts/serve_env.py --host 0.0.0.0 --port \"$PORT\" --task \"$TASK\" --max-sessions \"$MAX_SESSIONS\" --idle-timeout \"$IDLE_TIMEOUT\""]
