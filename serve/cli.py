"""``varedit-serve``: one command for the operator, dispatching to the tool that does the job.

    varedit-serve [serve] [--port ...]            the whole platform on this machine (serve.embedded)
    varedit-serve submit|get|wait|cancel|list|result|events ...   the HTTP client (varedit_client.cli)
    varedit-serve keys create|list|revoke|...     API keys in the configured database (serve.keys)

Each tool is imported only when asked for, so the client commands work where only the client is
installed (``pip install varedit-serve``, without the ``platform`` extras).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

PLATFORM_MISSING = (
    "varedit-serve: the platform is not installed here (only the client is); "
    "install it with: pip install 'varedit-serve[all]'"
)


def main(argv: Sequence[str] | None = None) -> int:
    from varedit_client.cli import quiet_when_stdout_closes

    # `varedit-serve keys list | head` ends as the client's commands do: quietly, with status 141
    return quiet_when_stdout_closes(lambda: _dispatch(list(sys.argv[1:] if argv is None else argv)))


def _dispatch(argv: list[str]) -> int:
    from varedit_client.cli import COMMANDS

    if argv and argv[0] in COMMANDS:
        from varedit_client.cli import main as client_main

        return client_main(argv, prog="varedit-serve")
    try:
        from serve.embedded import serve
        from serve.keys import main as keys_main
    except ModuleNotFoundError as exc:
        print(f"{PLATFORM_MISSING} (missing module {exc.name!r})", file=sys.stderr)
        return 2
    if argv and argv[0] == "keys":
        return keys_main(argv[1:])
    return serve(argv[1:] if argv and argv[0] == "serve" else argv)


if __name__ == "__main__":
    sys.exit(main())
