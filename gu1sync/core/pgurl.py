"""A PostgreSQL URL: whether libpq can read it, and how to show it without its password.

Both are asked before anything connects (the config's check, every message that names the
database), and neither ever quotes the URL back: a password may be in it.
"""

from __future__ import annotations

SECRET_PARAMS = ("password", "sslpassword")


def url_problem(url: str) -> str | None:
    """Why libpq cannot read `url`, in words that never quote it (a password may be in it); None if it can."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except ProgrammingError:
        params = None
    ports = str((params or {}).get("port") or "5432").split(",")
    if params is None or not all(port.isdigit() for port in ports):
        return (
            "not a PostgreSQL URL libpq can read: postgresql://USER:PASSWORD@HOST:5432/DATABASE, with any "
            "% / # ? @ : in the password percent-encoded (%25 %2F %23 %3F %40 %3A), or the password in PGPASSWORD"
        )
    return None


def display_url(url: str) -> str:
    """`url` as it may be shown and logged: user, hosts, ports, database and options, never a password."""
    from psycopg.conninfo import conninfo_to_dict

    if url_problem(url) is not None:
        return "postgresql://(a URL libpq cannot read)"
    params = conninfo_to_dict(url)
    user = f"{params.pop('user')}{':***' if params.get('password') else ''}@" if params.get("user") else ""
    if not user and params.get("password"):
        user = ":***@"
    hosts = str(params.pop("host", "") or "").split(",")
    ports = str(params.pop("port", "") or "").split(",")
    ports += [""] * (len(hosts) - len(ports))
    where = ",".join(f"{host}:{port}" if port else host for host, port in zip(hosts, ports, strict=False))
    database = params.pop("dbname", "")
    rest = "&".join(f"{key}={value}" for key, value in params.items() if key not in SECRET_PARAMS)
    return f"postgresql://{user}{where}/{database}" + (f"?{rest}" if rest else "")
