"""Per-caller slots (api/slots.py): counted per owner, refused past the limit, freed exactly once."""

from __future__ import annotations

import gc

import pytest

from api.slots import CallerSlots, SlotsTaken


def test_slots_are_counted_per_caller_and_freed_once() -> None:
    slots = CallerSlots("waits")
    first = slots.take("alice", 2)
    with slots.hold("alice", 2):
        with pytest.raises(SlotsTaken):
            slots.take("alice", 2)
        with slots.hold("bob", 2):  # another caller's slots are its own
            assert (slots.held("alice"), slots.held("bob")) == (2, 1)
    first.release()
    first.release()  # a second release changes nothing
    assert (slots.held("alice"), slots.held("bob")) == (0, 0)


def test_a_slot_nobody_released_is_freed_when_collected() -> None:
    """A response whose code never ran (its client left before an event stream began) drops its slot
    without releasing it: collecting it gives the slot back, else the caller would lose it for good."""
    slots = CallerSlots("waits")

    async def stream(slot: object):  # never started, like a stream whose client is gone
        yield slot

    never_started = stream(slots.take("alice", 1))
    assert slots.held("alice") == 1
    del never_started
    gc.collect()
    assert slots.held("alice") == 0
    slots.take("alice", 1)
