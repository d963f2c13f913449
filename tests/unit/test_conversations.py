"""Stored conversations for previous_response_id: bounded in count and age (injected clock)."""

import pytest

from daemon.errors import NotFound
from daemon.prediction.conversations import ConversationStore, new_response_id
from daemon.prediction.types import Message, TextPart

HI = (Message("user", (TextPart("hi"),)), Message("assistant", (TextPart("hello"),)))


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_put_get_delete() -> None:
    store = ConversationStore()
    rid = new_response_id()
    assert rid.startswith("resp_")
    store.put(rid, "echo", HI, {"id": rid})
    assert store.get(rid).messages == HI and store.get(rid).body == {"id": rid}
    store.delete(rid)
    with pytest.raises(NotFound, match="never stored, was deleted, or expired"):
        store.get(rid)


def test_the_oldest_go_first_when_full() -> None:
    store = ConversationStore(max_count=2)
    for rid in ("a", "b", "c"):
        store.put(rid, "echo", HI, {})
    assert len(store) == 2
    with pytest.raises(NotFound):
        store.get("a")
    assert store.get("c").id == "c"


def test_responses_expire_with_age() -> None:
    clock = Clock()
    store = ConversationStore(max_age=60, clock=clock)
    store.put("old", "echo", HI, {})
    clock.now += 30
    store.put("new", "echo", HI, {})
    clock.now += 31
    with pytest.raises(NotFound):
        store.get("old")
    assert store.get("new").id == "new"
    clock.now += 30
    assert len(store) == 0
