"""Alembic environment of the metrics migrations.

:meth:`~pyramid_mixpanel.metrics.store.MetricsStore.upgrade` passes its connection in
``config.attributes["connection"]``; the ``alembic`` command line uses ``sqlalchemy.url``, and
``--sql`` (offline mode) prints the SQL instead of running it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from pyramid_mixpanel.metrics.store import VERSION_TABLE


def run(connection: sa.Connection) -> None:
    """Run the migrations on ``connection``."""
    context.configure(connection=connection, version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


config = context.config
if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()
elif "connection" in config.attributes:
    run(config.attributes["connection"])
else:
    engine = sa.create_engine(str(config.get_main_option("sqlalchemy.url")))
    with engine.begin() as connection:
        run(connection)
    engine.dispose()
