"""Scratch databases for the benchmark: create, clone, drop.

Every figure is measured on databases named ``mailglass_bench_<random>...``
created on the server of the given URL and dropped at the end, so a benchmark
never touches application data. One migrated, empty database serves as the
template of the others; a loaded data set can itself be a template, so the
three contenders of a throughput run start from byte-identical data without
loading it three times.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from mailglass_pipeline import schema
from mailglass_pipeline.db import create_engine, normalize_url


def with_database(url: str, name: str) -> str:
    """``url`` pointing at database ``name`` on the same server."""
    return make_url(url).set(database=name).render_as_string(hide_password=False)


class ScratchServer:
    """The PostgreSQL server hosting the scratch databases of one benchmark run."""

    def __init__(self, url: str) -> None:
        self.admin_url = normalize_url(url)
        self.prefix = f"mailglass_bench_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = []
        self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self.template = self.prefix

    def server_facts(self) -> dict[str, str | int]:
        with self._admin.connect() as conn:
            version = conn.execute(sa.text("SELECT version()")).scalar_one()
            num = int(conn.execute(sa.text("SHOW server_version_num")).scalar_one())
            short = conn.execute(sa.text("SHOW server_version")).scalar_one()
        url = make_url(self.admin_url)
        return {
            "version": version,
            "server_version": short,
            "server_version_num": num,
            "host": f"{url.host or 'localhost'}:{url.port or 5432}",
        }

    def create_template(self) -> str:
        """The migrated, empty template every other scratch database is cloned from."""
        self._execute(f'CREATE DATABASE "{self.template}"')
        self.created.append(self.template)
        schema.upgrade(with_database(self.admin_url, self.template))
        return self.template

    def clone(self, tag: str, source: str | None = None) -> str:
        """A new database copied from ``source`` (default: the empty template); returns its URL.

        The source must have no open connection (PostgreSQL's rule for templates).
        """
        name = f"{self.prefix}_{tag}"
        self._execute(f'CREATE DATABASE "{name}" TEMPLATE "{source or self.template}"')
        self.created.append(name)
        return with_database(self.admin_url, name)

    @staticmethod
    def name_of(url: str) -> str:
        """The database name in ``url``."""
        name = make_url(url).database
        assert name, url
        return name

    def drop(self, url_or_name: str) -> None:
        name = make_url(url_or_name).database if "://" in url_or_name else url_or_name
        self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if name in self.created:
            self.created.remove(name)

    def drop_all(self) -> None:
        for name in reversed(list(self.created)):
            try:
                self.drop(name)
            except Exception as exc:  # keep dropping the others; say which one is left behind
                print(f"warning: could not drop scratch database {name}: {exc}")
        self._admin.dispose()

    def _execute(self, sql: str) -> None:
        with self._admin.connect() as conn:
            conn.execute(sa.text(sql))


@contextmanager
def engine_for(url: str) -> Iterator[Engine]:
    """A mailglass engine (same settings as the application's) disposed on exit."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()
