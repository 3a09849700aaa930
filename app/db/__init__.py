"""Database: the data layer (statements on the drivers), the schema, and the Alembic runner."""
