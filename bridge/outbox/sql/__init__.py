"""SQL files of the outbox adapters: numbered migrations and named queries, one folder per engine."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change."""

    version: int
    name: str
    sql: str


def load_queries(engine: str) -> dict[str, str]:
    """The named queries of ``engine`` (``sql/<engine>/queries.sql``), by name."""
    text = resources.files(__package__).joinpath(engine, "queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"{engine}/queries.sql: query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


def load_migrations(engine: str) -> list[Migration]:
    """The migrations of ``engine`` in version order; versions must run 1, 2, 3, ... without gaps."""
    folder = resources.files(__package__).joinpath(engine)
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _MIGRATION.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ValueError(
                f"{engine} migrations: expected version {expected:04d}, found {migration.version:04d}"
            )
    return found
