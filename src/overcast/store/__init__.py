"""SQL tables, transactions and atomic claims; Alembic migrations.

SQLite (embedded, WAL) or PostgreSQL. Imports only ``overcast.model``.
"""

from overcast.store.engine import Store, migrate, sqlite_url

__all__ = ["Store", "migrate", "sqlite_url"]
