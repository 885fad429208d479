"""A database outage is a 503 a client knows to retry, never a 500; once the database is back, the API
serves again. The outage is real at the TCP level: PostgreSQL is reached through a proxy that the test
cuts (every connection dropped, new ones refused) and restores."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy.engine import make_url

from jobs.settings import Settings
from tests.api.test_edits import post_multipart
from tests.conftest import ApiHarness


class TcpProxy:
    """Forwards 127.0.0.1:<port> to an upstream port until `down()`; `up()` listens again."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def up(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        with self._lock:
            doomed, self._sockets = [self._listener, *self._sockets], []
            self._listener = None
        for sock in doomed:
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by down()
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def proxied(postgres_url: str, make_settings: Callable[..., Settings], redis_url: str) -> Iterator[tuple]:
    url = make_url(postgres_url)
    proxy = TcpProxy(url.port or 5432)
    proxy.up()
    settings = make_settings(
        database_url=url.set(port=proxy.port).render_as_string(False), broker_url=redis_url
    )
    with ApiHarness(settings) as harness:
        yield harness, proxy
    proxy.down()


def test_postgres_down_answers_503_with_retry_after_and_recovers(proxied) -> None:
    harness, proxy = proxied
    job_id = post_multipart(harness).json()["id"]
    # when the database goes away
    proxy.down()
    for response in (post_multipart(harness), harness.client.get(f"/v1/jobs/{job_id}")):
        # then a client is told to come back, not that the server is broken
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "service_unavailable"
        assert int(response.headers["retry-after"]) > 0
        assert "127.0.0.1" not in response.text and "psycopg" not in response.text
    # and once it is back, the next requests succeed
    proxy.up()
    assert post_multipart(harness).status_code == 202
    assert harness.client.get(f"/v1/jobs/{job_id}").status_code == 200
