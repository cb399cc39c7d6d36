"""A bounded, time-limited record of answered requests, so that ``/v1/feedback`` can find
a request's context and arm seconds later. Bounded: the oldest records go first."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Generic, TypeVar

Record = TypeVar("Record")


class RequestLog(Generic[Record]):
    def __init__(self, capacity: int = 10_000, ttl_s: float = 600.0) -> None:
        self.capacity = capacity
        self.ttl_s = ttl_s
        self._records: OrderedDict[str, tuple[float, Record]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, request_id: str) -> bool:
        return self.get(request_id) is not None

    def put(self, request_id: str, record: Record) -> None:
        self._records[request_id] = (time.monotonic(), record)
        self._records.move_to_end(request_id)
        self._evict()

    def get(self, request_id: str) -> Record | None:
        entry = self._records.get(request_id)
        if entry is None or time.monotonic() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def _evict(self) -> None:
        now = time.monotonic()
        while self._records:
            request_id, (stamp, _) = next(iter(self._records.items()))
            if len(self._records) > self.capacity or now - stamp > self.ttl_s:
                self._records.pop(request_id)
            else:
                break
