"""The ``varedit`` script's entry point: the model's command line (`varedit.cli`) where the model is
installed, else one line saying what to install.

The check cannot live in the model package: ``import varedit.cli`` first runs ``varedit/__init__.py``,
which imports torch. A client-only install (``pip install varedit-serve``) has the ``varedit`` script
but not torch, and ended in a ModuleNotFoundError traceback.
"""

from __future__ import annotations

import sys

MODEL_MISSING = (
    "varedit: the model is not installed here; install it with: pip install 'varedit-serve[model]'"
)


def main(argv: list[str] | None = None) -> int:
    try:
        from varedit.cli import main as model_main
    except ModuleNotFoundError as exc:
        print(f"{MODEL_MISSING} (missing module {exc.name!r})", file=sys.stderr)
        return 2
    return model_main(argv)


if __name__ == "__main__":
    sys.exit(main())
