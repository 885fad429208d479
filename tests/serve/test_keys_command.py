"""`varedit-serve keys create` refuses, in one line with exit status 2 and before touching the
database, a key it could not store or its limiter could not enforce; a database it cannot open is one
line with status 1, its password masked. Run against PostgreSQL, which (unlike SQLite) enforces the
columns' sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _keys(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VAREDIT_")}
    return subprocess.run(
        [sys.executable, "-m", "serve", "keys", *args],
        env=clean | env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        # before: stored, then every request failed in Redis ("value is not an integer or out of range")
        (
            ["x", "--rate-limit", "99999999999999999999999/second"],
            "rate limit '99999999999999999999999/second' allows more than 2147483647 requests per window",
        ),
        # before: stored; after one request the key was told Retry-After 31104000000000000000
        (
            ["x", "--rate-limit", "1/ 1000000000000 years"],
            "rate limit '1/ 1000000000000 years' has a window longer than 1 year (31104000 seconds)",
        ),
        (
            ["x", "--rate-limit", "1/2 years"],
            "rate limit '1/2 years' has a window longer than 1 year (31104000 seconds)",
        ),
        # before: stored, and enforced as 1/second
        (["x", "--rate-limit", "1/0 second"], "rate limit '1/0 second' has a window of 0"),
        # before: stored, and enforced as its first rate only
        (
            ["x", "--rate-limit", "1/second;100/day"],
            "rate limit '1/second;100/day' states 2 rates; give one, such as 60/minute",
        ),
        (["x", "--rate-limit", "1" + " " * 60 + "/second"], "a rate limit has at most 64 characters, got 68"),
        # before: a NumericValueOutOfRange traceback, exit status 1
        (
            ["x", "--max-in-flight", "99999999999999999999"],
            "max in flight 99999999999999999999 is more than 2147483647",
        ),
        # before: a StringDataRightTruncation traceback, exit status 1
        (["n" * 5000], "a key's name has at most 128 characters, got 5000"),
        # before: stored, a key listed with no name
        ([""], "a key's name must not be empty"),
        (["   "], "a key's name must not be empty"),
    ],
)
def test_create_refuses_a_key_it_could_not_store_or_enforce(
    postgres_url: str, args: list[str], problem: str
) -> None:
    done = _keys("create", *args, VAREDIT_DATABASE_URL=postgres_url)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr == f"varedit-serve keys: {problem}\n"
    assert done.stdout == ""
    listed = _keys("list", VAREDIT_DATABASE_URL=postgres_url)
    assert (listed.returncode, json.loads(listed.stdout)) == (0, [])


def test_create_takes_the_largest_rate_and_cap(postgres_url: str) -> None:
    done = _keys(
        "create", "n" * 128, "--rate-limit", "2147483647/year", "--max-in-flight", "2147483647",
        VAREDIT_DATABASE_URL=postgres_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    made = json.loads(done.stdout)
    assert (made["rate_limit"], made["max_in_flight"]) == ("2147483647/year", 2147483647)


def test_a_database_that_cannot_be_opened_is_one_line_without_its_password() -> None:
    # before: a sqlalchemy OperationalError traceback, exit status 1
    url = "postgresql+psycopg://postgres:supersecret4@127.0.0.1:1/keys"
    done = _keys("list", VAREDIT_DATABASE_URL=url)
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.startswith(
        "varedit-serve keys: cannot open the database postgresql+psycopg://postgres:***@127.0.0.1:1/keys: "
    )
    assert "Connection refused" in done.stderr and done.stderr.count("\n") == 1
    assert "supersecret4" not in done.stderr and done.stdout == ""


def test_a_data_dir_that_cannot_hold_the_database_is_a_usage_error(tmp_path: Path) -> None:
    # before: a FileExistsError traceback, exit status 1
    (tmp_path / "a-file").write_text("")
    done = _keys("list", VAREDIT_DATA_DIR=str(tmp_path / "a-file"))
    assert done.returncode == 2, done.stdout + done.stderr
    folder = tmp_path / "a-file"
    assert done.stderr == f"varedit-serve keys: cannot make the database's folder {folder}: not a folder\n"
