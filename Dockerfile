FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /srv/app

COPY requirements.lock ./
RUN pip install --require-hashes -r requirements.lock

COPY . .
RUN pip install --no-deps . && useradd --create-home --uid 10001 registry
USER registry

ENV HOST=0.0.0.0 PORT=8000
EXPOSE 8000
CMD ["nango-registry", "serve"]
