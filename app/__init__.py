"""nango-registry: the backend half of Nango's Connect-session flow.

The layout, and how to add a route, a webhook rule or a migration: CONTRIBUTING.md.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nango-registry")
except PackageNotFoundError:  # pragma: no cover (run from a checkout that was never installed)
    __version__ = "0+unknown"
