# There is no Docker engine where this file is written: it is checked by hadolint
# (`make lint-docker`), not built, by the test suite.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/app

# Dependencies in their own layer: it is rebuilt only when the lock file changes.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY migrations ./migrations
# The code stays root-owned and read-only for the user that runs it; /data is the only place
# it may write (a SQLite file when no DATABASE_URL is given).
RUN pip install --no-deps . \
    && useradd --system --no-log-init --uid 10001 --no-create-home registry \
    && mkdir /data \
    && chown 10001:10001 /data
USER 10001:10001

# serve reads HOST, PORT and WEB_CONCURRENCY. FORWARDED_ALLOW_IPS keeps its loopback default:
# set it to your proxy's address when one sits in front of the container.
ENV PORT=8000 \
    DATABASE_URL=sqlite:////data/nango-registry.db
EXPOSE 8000
VOLUME ["/data"]

# slim has no curl; the standard library is enough to ask /healthz.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/healthz', timeout=4)"]

# The same command as the Procfile's web process. Exec form: uvicorn is PID 1 and receives
# SIGTERM itself. Run `nango-registry migrate` (same image) before starting a new version.
CMD ["nango-registry", "serve", "--host", "0.0.0.0"]
