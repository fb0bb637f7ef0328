"""The web console (`gu1-sync console`): what `events`, `show`, `failed`, `stats`, `replay` and
`simulate` show and do, as pages for ops and compliance staff who never open a shell.

- `app`: the Flask app: sign-in (accounts with a role, or an authenticating proxy's header), sessions,
  CSRF protection on every form, a lockout after repeated failed sign-ins, security headers;
- `pages`: overview, events, one event's trace, failures and replays, rules and the simulator, audit.

Its own process and port (127.0.0.1:8001 by default), never the receiver's. Server-rendered pages,
no JavaScript at all: pages that follow something (the overview, a replay running) refresh themselves.
No personal data goes into its URLs, page titles or logs: a search goes in a form's body.
"""

from __future__ import annotations

from .app import ROLES, create_console, hash_password

__all__ = ["ROLES", "create_console", "hash_password"]
