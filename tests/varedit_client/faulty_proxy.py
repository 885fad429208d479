"""A TCP proxy in front of the API that breaks chosen requests the way networks do, so the client's
retries and fallbacks are tested against the real platform.

Rules are patterns searched in a request's first line (``rb"^POST /v1/edits "``) as it passes; httpx
writes a request's head in one piece, so every request on a kept-alive connection is seen.

- ``lose_answer(pattern, times)``: forward the request, swallow the answer and close the connection
  (the server did the work; the client never hears of it);
- ``refuse(pattern)``: close the connection without forwarding the request;
- ``cut_answer(pattern, after, times)``: forward the request and its answer until ``after`` has passed,
  then close the connection (an event stream dropped midway).

``answered`` holds every answer byte that reached the clients, in order.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from dataclasses import dataclass


@dataclass
class _Rule:
    pattern: re.Pattern[bytes]
    action: str  # "lose_answer" | "refuse" | "cut_answer"
    times: int | None  # None: every time
    after: bytes = b""  # cut_answer: the bytes after which the answer is cut
    fired: int = 0


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket
    swallow: bool = False
    cut_after: bytes | None = None  # cut the answer once these bytes have passed
    seen: bytes = b""  # the answer so far, while a cut is pending


class FaultyProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lost_answers = 0  # answers swallowed so far
        self.refused = 0
        self.cut = 0  # answers cut so far
        self.answered = bytearray()
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_answer(self, pattern: bytes, times: int = 1) -> None:
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), "lose_answer", times))

    def refuse(self, pattern: bytes) -> None:
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), "refuse", None))

    def cut_answer(self, pattern: bytes, after: bytes, times: int = 1) -> None:
        with self._lock:
            self._rules.append(_Rule(re.compile(pattern), "cut_answer", times, after))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.close()

    def _match(self, data: bytes) -> _Rule | None:
        line = data.split(b"\r\n", 1)[0]
        with self._lock:
            for rule in self._rules:
                if rule.pattern.search(line) and (rule.times is None or rule.fired < rule.times):
                    rule.fired += 1
                    return rule
        return None

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            conn = _Connection(client, upstream)
            threading.Thread(target=self._requests, args=(conn,), daemon=True).start()
            threading.Thread(target=self._answers, args=(conn,), daemon=True).start()

    def _requests(self, conn: _Connection) -> None:
        try:
            while data := conn.client.recv(65536):
                rule = self._match(data)
                action = rule.action if rule is not None else None
                if action == "refuse":
                    with self._lock:
                        self.refused += 1
                    break
                if action == "lose_answer":
                    conn.swallow = True
                if rule is not None and action == "cut_answer":
                    conn.cut_after = rule.after
                conn.upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close(conn)

    def _answers(self, conn: _Connection) -> None:
        try:
            while data := conn.upstream.recv(65536):
                if conn.swallow:  # the server answered: the work is done, and the client never hears
                    with self._lock:
                        self.lost_answers += 1
                    break
                if conn.cut_after is not None:
                    conn.seen += data
                    end = conn.seen.find(conn.cut_after)
                    if end >= 0:  # pass the answer up to the marker's end, then drop the connection
                        data = data[: len(data) - (len(conn.seen) - end - len(conn.cut_after))]
                        self._forward(conn, data)
                        with self._lock:
                            self.cut += 1
                        break
                self._forward(conn, data)
        except OSError:
            pass
        finally:
            self._close(conn)

    def _forward(self, conn: _Connection, data: bytes) -> None:
        conn.client.sendall(data)
        with self._lock:
            self.answered += data

    @staticmethod
    def _close(conn: _Connection) -> None:
        for sock in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
