"""nango-registry: the backend half of Nango's Connect-session flow.

The layout, and how to add a route, a webhook rule or a migration: CONTRIBUTING.md.
"""
