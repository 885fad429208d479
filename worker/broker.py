"""A guard on kombu's Redis transport, so a worker survives its broker dying while it holds a message.

The bug (kombu 5.7.0, the newest release when this was written; celery 5.7.0). A worker holds an
unacknowledged message (an ETA/countdown message waits in the worker, unacked, until it is due) and
loses its Redis connection while blocked in BRPOP, as an idle worker is. Celery's consumer calls
``Connection.collect()``: closing the channel fails reading the dead BRPOP socket (a connection error,
ignored) before the channel is marked closed, and collect then detaches the transport
(``transport.client = None``). Celery then calls ``Connection.close()``, which closes the same channel
again; that close restores the unacked messages (``QoS.restore_unacked``) through a new connection pool
built from ``transport.client``: ``AttributeError: 'NoneType' object has no attribute 'hostname'``. It
is not a connection error, so nothing swallows it and the worker exits with "Unrecoverable error". The
same failure on a detached Redis transport is public as kombu issues #582 and #970 (cleanup/restore on
a closed connection reading ``None.hostname``).

The guard: when the channel's transport has been detached, skip the restore instead of crashing.
Nothing is lost by skipping: Redis is unreachable at that moment anyway (the restore could not have
succeeded), the messages stay in Redis's ``unacked`` hash and are restored by ``restore_visible`` after
the visibility timeout, and the database is the truth (the stranded-job republisher and the webhook
dispatcher resend what is due). Only the detached case is changed; everything else runs kombu's code.

The same detached channel kills a worker a second way: a task that was running when Redis died ends,
and its acknowledgement (or rejection) reaches the old channel once the consumer has reconnected
(``AttributeError: 'NoneType' object has no attribute 'client'``). The guard settles it in memory only;
the message stays in the ``unacked`` hash and comes back after the visibility timeout as a duplicate,
harmless like every duplicate (the claim decides what an edit message runs; a webhook task carries its
attempt count).

When it can go: once a kombu release restores (or skips) unacked messages, and acknowledges, on a
detached transport without raising. To check, drop the `install_redis_restore_guard()` call in
`worker/celery_app.py` and run ``tests/worker/test_broker_loss.py``; if the workers survive, delete
this module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import structlog
from kombu.transport import redis as kombu_redis

log = structlog.get_logger(__name__)

_MARK = "_varedit_restore_guard"


def transport_detached(qos: Any) -> bool:
    """True when the QoS's channel no longer has a live kombu connection behind its transport: any
    new client would be built from ``transport.client``, which closing the connection set to None."""
    transport = getattr(qos.channel, "connection", None)
    return transport is None or getattr(transport, "client", None) is None


def _skip_unacked(qos: Any) -> None:
    held = len(qos._delivered)
    # What kombu does after a restore: the channel is going away, its in-memory bookkeeping with it.
    qos._delivered.clear()
    log.warning(
        "broker_restore_skipped",
        unacked=held,
        reason="broker connection closed; Redis restores them after the visibility timeout",
    )


def _guard_unacked(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def restore_unacked(self: Any, client: Any = None) -> Any:
        if client is None and transport_detached(self):
            _skip_unacked(self)
            return None
        return original(self, client)

    return restore_unacked


def _guard_visible(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def restore_visible(self: Any, *args: Any, **kwargs: Any) -> Any:
        if transport_detached(self):
            return None  # the next connection's sweep restores them
        return original(self, *args, **kwargs)

    return restore_visible


def _guard_settle(original: Callable[..., Any], how: str) -> Callable[..., Any]:
    """``QoS.ack`` / ``QoS.reject`` of a message whose channel was detached while its task ran (a
    worker with a free pool process waits in BRPOP, so that socket sees Redis die and the skip above
    detaches the channel): the task's acknowledgement arrives on that channel once the consumer has
    reconnected, and kombu would build a client from the detached transport (``AttributeError:
    'NoneType' object has no attribute 'client'``, "Unrecoverable error"). Settle it in memory only:
    the message stays in Redis's ``unacked`` hash and comes back after the visibility timeout as a
    harmless duplicate."""

    @functools.wraps(original)
    def settle(self: Any, delivery_tag: Any, *args: Any, **kwargs: Any) -> Any:
        if transport_detached(self):
            self._quick_ack(delivery_tag)  # kombu's in-memory part of an ack (virtual QoS)
            log.warning(
                "broker_settle_skipped",
                how=how,
                reason="broker connection closed; Redis restores the message after the visibility timeout",
            )
            return None
        return original(self, delivery_tag, *args, **kwargs)

    return settle


def install_redis_restore_guard() -> None:
    """Wrap kombu's Redis ``QoS.restore_unacked``, ``restore_visible``, ``ack`` and ``reject``
    (idempotent)."""
    qos = kombu_redis.QoS
    if getattr(qos, _MARK, False):
        return
    qos.restore_unacked = _guard_unacked(qos.restore_unacked)
    qos.restore_visible = _guard_visible(qos.restore_visible)
    qos.ack = _guard_settle(qos.ack, "ack")
    qos.reject = _guard_settle(qos.reject, "reject")
    setattr(qos, _MARK, True)
