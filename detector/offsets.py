"""Which consumed offsets may be committed. Frames of a partition finish out of order (they
share batches), but a committed offset says "everything before it is done": so each
partition commits up to its first frame still in flight, never past it."""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

PartitionT = TypeVar("PartitionT", bound=Hashable)


@dataclass(eq=False)
class Pending:
    """One consumed record; the token :meth:`OffsetTracker.done` takes."""

    offset: int
    done: bool = False


class OffsetTracker(Generic[PartitionT]):
    def __init__(self) -> None:
        self._pending: dict[PartitionT, deque[Pending]] = {}
        self._unfinished = 0

    @property
    def unfinished(self) -> int:
        """Records taken and not yet done, over all partitions."""
        return self._unfinished

    def add(self, partition: PartitionT, offset: int) -> Pending:
        queue = self._pending.setdefault(partition, deque())
        if queue and offset <= queue[-1].offset:
            raise ValueError(f"offset {offset} of {partition} is not after {queue[-1].offset}")
        entry = Pending(offset)
        queue.append(entry)
        self._unfinished += 1
        return entry

    def done(self, entry: Pending) -> None:
        if not entry.done:
            entry.done = True
            self._unfinished -= 1

    def unfinished_in(self, partition: PartitionT) -> int:
        return sum(1 for entry in self._pending.get(partition, ()) if not entry.done)

    def ready(self) -> dict[PartitionT, int]:
        """The next offset to commit for each partition that advanced (last done offset + 1)."""
        commits: dict[PartitionT, int] = {}
        for partition, queue in self._pending.items():
            while queue and queue[0].done:
                commits[partition] = queue.popleft().offset + 1
        return commits

    def drop(self, partitions: Iterable[PartitionT]) -> None:
        """Forgets partitions this consumer no longer owns; their unfinished records will be redelivered."""
        for partition in partitions:
            queue = self._pending.pop(partition, deque())
            for entry in queue:
                if not entry.done:
                    # Marked done so a late finish of its task changes no count.
                    entry.done = True
                    self._unfinished -= 1
