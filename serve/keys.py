"""`varedit-serve keys ...`: the operator's API-key commands, run against the configured database.

    varedit-serve keys create NAME [--rate-limit 60/minute] [--max-in-flight 10] [--max-priority 5]
    varedit-serve keys list
    varedit-serve keys revoke KEY_ID
    varedit-serve keys rotate-webhook-secret KEY_ID

`create` prints the token (shown this once) and the key's webhook signing secret; `rotate-webhook-secret`
prints the new secret (the previous one keeps signing until the next rotation). The schema is migrated
first, so these work on a fresh laptop database too.

`create` refuses, before touching the database: an empty name or one over 128 characters; a rate that
is not one rate of 1 to 2147483647 requests per window of 1 second to 1 year (12 months of 30 days);
a --max-in-flight outside 1..2147483647. A refused value, or a key id that does not exist, is one line
on stderr and exit status 2; a database that cannot be reached or opened, one line and status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from jobs import keys
from jobs.db import make_engine, make_sessionmaker, migrate, session_scope
from jobs.errors import JobsError
from jobs.models import ApiKey
from jobs.settings import get_settings
from serve.preflight import ConfigProblem, DatabaseUnavailable, database_errors


def _view(key: ApiKey, **extra: Any) -> dict[str, Any]:
    return {
        "id": key.id,
        "name": key.name,
        "rate_limit": key.rate_limit,
        "max_in_flight": key.max_in_flight,
        "max_priority": key.max_priority,
        "created_at": key.created_at.isoformat(),
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        **extra,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="varedit-serve keys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="make a key; prints its token once")
    create.add_argument("name")
    create.add_argument("--rate-limit", help="edits per period for this key, e.g. 60/minute")
    create.add_argument("--max-in-flight", type=int, help="queued + running jobs for this key")
    create.add_argument(
        "--max-priority",
        type=int,
        default=0,
        choices=range(0, 11),
        metavar="0..10",
        help="the highest job priority this key may ask for (default 0: normal only)",
    )
    commands.add_parser("list", help="every key (never the tokens)")
    for name, text in (("revoke", "stop a key at once"), ("rotate-webhook-secret", "new signing secret")):
        commands.add_parser(name, help=text).add_argument("key_id")
    args = parser.parse_args(argv)
    try:
        if args.command == "create":  # before the database: nothing is touched for a refused value
            keys.check_new_key(args.name, rate_limit=args.rate_limit, max_in_flight=args.max_in_flight)
        settings = get_settings()
        with database_errors(settings.database_url):
            out = _run(args, settings.database_url)
    except (JobsError, ValueError, ConfigProblem) as e:
        print(f"varedit-serve keys: {e}", file=sys.stderr)
        return 2
    except DatabaseUnavailable as e:
        print(f"varedit-serve keys: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


def _run(args: argparse.Namespace, database_url: str) -> Any:
    migrate(database_url)
    engine = make_engine(database_url)
    try:
        with session_scope(make_sessionmaker(engine)) as session:
            if args.command == "create":
                new = keys.create(
                    session,
                    args.name,
                    rate_limit=args.rate_limit,
                    max_in_flight=args.max_in_flight,
                    max_priority=args.max_priority,
                )
                out: Any = _view(new.key, token=new.token, webhook_secret=new.key.webhook_secret)
            elif args.command == "list":
                out = [_view(key) for key in keys.all_keys(session)]
            elif args.command == "revoke":
                out = _view(keys.revoke(session, args.key_id))
            else:
                key = keys.rotate_webhook_secret(session, args.key_id)
                out = _view(key, webhook_secret=key.webhook_secret)
    finally:
        engine.dispose()
    return out


if __name__ == "__main__":
    raise SystemExit(main())
