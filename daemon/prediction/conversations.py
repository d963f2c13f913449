"""Stored conversations, for the stateful APIs (`previous_response_id` on OpenAI's
Responses API and LM Studio's REST v1 chat): each stored response keeps the whole
conversation up to and including its answer, so a follow-up names only the last id.

Kept in the daemon's memory, bounded in count and in age: the oldest go first when the
store is full, and a response expires `max_age` seconds after it was stored. They are lost
on purpose only then, when a client deletes one, when it asked for `store: false` (never
stored), or when the daemon stops. Owned by the prediction side's composition (Core); runs
on the event loop; the clock is injectable.
"""

import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from daemon.errors import NotFound
from daemon.prediction.types import Message

DEFAULT_MAX_COUNT = 1000
DEFAULT_MAX_AGE_S = 24 * 3600.0


@dataclass(frozen=True)
class StoredResponse:
    id: str
    model: str
    messages: tuple[Message, ...]  # the conversation, the answer included
    body: dict[str, Any]  # the response object as its surface returned it
    stored_at: float  # the store's clock


def new_response_id(prefix: str = "resp") -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class ConversationStore:
    def __init__(
        self,
        *,
        max_count: int = DEFAULT_MAX_COUNT,
        max_age: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._max_count = max_count
        self._max_age = max_age
        self._clock = clock

    def __len__(self) -> int:
        self._expire()
        return len(self._items)

    def put(
        self, response_id: str, model: str, messages: tuple[Message, ...], body: dict[str, Any]
    ) -> StoredResponse:
        self._expire()
        stored = StoredResponse(response_id, model, messages, body, self._clock())
        self._items.pop(response_id, None)
        self._items[response_id] = stored
        while len(self._items) > self._max_count:
            self._items.popitem(last=False)
        return stored

    def get(self, response_id: str) -> StoredResponse:
        """The stored response; NotFound (404) when unknown, deleted or expired."""
        self._expire()
        stored = self._items.get(response_id)
        if stored is None:
            raise NotFound(
                f"no stored response with id {response_id!r} (it was never stored, was "
                "deleted, or expired; responses are kept in memory for "
                f"{self._max_age / 3600:g} h, at most {self._max_count})"
            )
        return stored

    def delete(self, response_id: str) -> StoredResponse:
        stored = self.get(response_id)
        del self._items[response_id]
        return stored

    def _expire(self) -> None:
        limit = self._clock() - self._max_age
        while self._items:
            oldest = next(iter(self._items.values()))
            if oldest.stored_at > limit:
                return
            self._items.popitem(last=False)
