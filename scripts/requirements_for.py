"""Print the pinned dependencies of pyproject.toml for one image: `api` (no torch, no model stack) or
`worker` (everything). The Dockerfile installs these, then the project itself with --no-deps, so the
API image never carries torch while both images share one dependency list.

    python scripts/requirements_for.py api > requirements-api.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# The model stack: only GPU workers import these (varedit/).
MODEL_ONLY = {"torch", "safetensors", "transformers", "tokenizers", "tqdm"}


def requirements(target: str) -> list[str]:
    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    deps: list[str] = pyproject["project"]["dependencies"]
    if target == "worker":
        return deps
    if target == "api":
        return [d for d in deps if _name(d) not in MODEL_ONLY]
    raise SystemExit(f"unknown target {target!r}; use 'api' or 'worker'")


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()


if __name__ == "__main__":
    print("\n".join(requirements(sys.argv[1] if len(sys.argv) > 1 else "api")))
