"""Database: the async engine, the tables, and the Alembic runner."""
