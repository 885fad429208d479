"""Non-finite and overflowing numbers are refused with 422 in every encoding, and an error answer never
breaks the HTTP connection: the same keep-alive connection then serves a valid request."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator

import pytest

from api.main import create_app
from jobs.settings import Settings
from tests.api.test_edits import image_bytes
from tests.conftest import live_server, record_tiny_facts

NUMERIC_FIELDS = ["seed", "cfg", "tau", "priority", "resolution", "start_timeout_s"]
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "nan", "inf"]


@pytest.fixture
def live_api(api_settings: Settings) -> Iterator[tuple[str, int]]:
    """The API under a real uvicorn server on 127.0.0.1 (its own thread), for connection-level tests."""
    app = create_app(api_settings)
    with live_server(app) as port:
        record_tiny_facts(app.state.sessions)
        yield "127.0.0.1", port


def _multipart(fields: dict[str, str]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    image = image_bytes()
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _json(fields: dict[str, str]) -> tuple[bytes, str]:
    # The raw text of each number, as a client could send it (Python's json writes NaN and Infinity).
    members = ['"instruction": "make it blue"', f'"image_base64": "{_b64()}"']
    members += [f'"{k}": {v}' for k, v in fields.items()]
    return ("{" + ", ".join(members) + "}").encode(), "application/json"


def _b64() -> str:
    import base64

    return base64.b64encode(image_bytes()).decode()


def _post(conn: http.client.HTTPConnection, body: bytes, content_type: str) -> tuple[int, dict]:
    conn.request("POST", "/v1/edits", body=body, headers={"Content-Type": content_type})
    response = conn.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.parametrize("encoding", ["multipart", "json"])
def test_non_finite_numbers_are_refused_and_the_connection_survives(live_api, encoding: str) -> None:
    host, port = live_api
    conn = http.client.HTTPConnection(host, port, timeout=10)
    encode = _multipart if encoding == "multipart" else _json
    for field in NUMERIC_FIELDS:
        for value in NON_FINITE:
            if encoding == "multipart":
                fields = {"instruction": "make it blue", field: value}
            else:
                if value in ("nan", "inf"):
                    value = f'"{value}"'  # not JSON literals: sent as strings
                fields = {field: value}
            status, body = _post(conn, *encode(fields))
            assert status == 422, (field, value, status, body)
            assert body["error"]["code"] == "invalid_request", (field, value, body)
    # the same keep-alive connection still serves a valid request
    fields = {"instruction": "make it blue"} if encoding == "multipart" else {}
    status, body = _post(conn, *encode(fields))
    assert status == 202 and body["status"] == "queued", body
    conn.close()
