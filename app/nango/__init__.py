"""The outbound client for Nango's API (Connect sessions, connections)."""
