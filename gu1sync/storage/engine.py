"""Which database a config names: the SQLite file of one box, or the PostgreSQL of several."""

from __future__ import annotations

from ..core.timeutil import Clock, utcnow
from .database import Database
from .postgres import PostgresDatabase

POSTGRES_SCHEMES = ("postgresql://", "postgres://")

AnyDatabase = Database | PostgresDatabase


def is_postgres(where: str) -> bool:
    return where.startswith(POSTGRES_SCHEMES)


def open_database(
    where: str,
    busy_timeout: float = 5.0,
    clock: Clock = utcnow,
    *,
    durable: bool = True,
    read_only: bool = False,
) -> AnyDatabase:
    """The database at `where`: a postgresql:// URL, or a SQLite file (a path, or sqlite:///path)."""
    if is_postgres(where):
        return PostgresDatabase(where, busy_timeout, clock, durable=durable, read_only=read_only)
    path = where.removeprefix("sqlite:///") if where.startswith("sqlite:///") else where
    return Database(path, busy_timeout, clock, durable=durable, read_only=read_only)


def engine_name(database: AnyDatabase) -> str:
    """How messages name the engine: SQLite or PostgreSQL."""
    return "PostgreSQL" if database.dialect == "postgresql" else "SQLite"
