"""Alembic migrations of the metrics tables, run by :meth:`MetricsStore.upgrade`.

They keep their own version table (``mixpanel_metrics_alembic_version``), so they can live in
the app's database next to the app's own migrations. To run them with the ``alembic`` command
instead, point an ``alembic.ini`` at them::

    [alembic]
    script_location = pyramid_mixpanel.metrics:migrations
    sqlalchemy.url = postgresql+psycopg://user@host/dbname
"""
