"""nango-registry: the backend half of Nango's Connect-session flow.

Layout (one module per concept):

- ``settings``      the typed settings object, the only reader of the environment
- ``main``          the ASGI app (``app.main:app``) and the ``create_app`` factory
- ``logs``          structlog JSON logging, uvicorn's logs included
- ``middleware``    request IDs and one access-log line per request
- ``errors``        the exception hierarchy and the one JSON error shape
- ``health``        ``/healthz`` and ``/readyz``
- ``db/``           engine, tables, migrations runner
- ``webhooks/``     ``POST /webhooks/nango``: signature, inbox, connection state
- ``api/``          the authenticated ``/v1`` API for internal services
- ``nango/``        the outbound client for Nango's API
- ``cli/``          the ``nango-registry`` console script
"""
