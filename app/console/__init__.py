"""The operator console at ``/console/``: server-rendered pages over the same data and the same
service functions as the API and the command line (issue 15).

Mounted only when ``CONSOLE_USERNAME`` and ``CONSOLE_PASSWORD`` are set; every request passes
``guard.ConsoleGuard`` (Basic Auth, security headers) and every ``POST`` a CSRF token
(``csrf``). Pages are in ``pages``, actions in ``actions``, the figures of the overview in
``figures``.
"""
