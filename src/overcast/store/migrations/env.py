"""Alembic environment: runs migrations on the connection it is handed.

:func:`overcast.store.engine.migrate` passes a live sync connection through
``config.attributes["connection"]`` so that no second URL parsing or engine
set-up exists here.
"""

from __future__ import annotations

from alembic import context

from overcast.store.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
