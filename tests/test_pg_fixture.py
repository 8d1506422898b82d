"""The throwaway PostgreSQL server from tests/pg.py works."""

import pytest
from sqlalchemy import create_engine, text

from pg import fresh_database


@pytest.mark.postgres
def test_fresh_database_answers(pg_url: str) -> None:
    url = fresh_database(pg_url)
    assert url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    assert url != pg_url
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
            version = conn.execute(text("show server_version")).scalar_one()
            assert int(version.split(".")[0]) >= 15, version
            tables = conn.execute(
                text("select count(*) from pg_tables where schemaname = 'public'")
            ).scalar_one()
            assert tables == 0
    finally:
        engine.dispose()
