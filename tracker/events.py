"""carmesh.events.v1 and carmesh.tracks.v1: the tracker publishes its TrackEvents and each
frame's FrameTracks there; WatchEvents follows the events live for one camera (a consumer per
watcher, no group, from the end of every partition)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from google.protobuf.message import DecodeError

from carmesh.v1 import tracking_pb2

log = logging.getLogger(__name__)


class Publisher:
    """TrackEvents to the events topic, FrameTracks to the tracks topic (key: camera id)."""

    def __init__(self, producer: AIOKafkaProducer, events_topic: str, tracks_topic: str) -> None:
        self._producer = producer
        self._events_topic = events_topic
        self._tracks_topic = tracks_topic

    async def publish(self, events: list[tracking_pb2.TrackEvent], frames: list[tracking_pb2.FrameTracks]) -> None:
        """Sends them all and waits until the broker has every one."""
        deliveries = [
            await self._producer.send(self._tracks_topic, f.SerializeToString(), key=f.camera_id.encode())
            for f in frames
        ]
        deliveries += [
            await self._producer.send(self._events_topic, e.SerializeToString(), key=e.camera_id.encode())
            for e in events
        ]
        await asyncio.gather(*deliveries)


class EventsFollower:
    def __init__(self, bootstrap: str, topic: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic

    async def follow(
        self, camera_id: str, on_ready: Callable[[], Awaitable[None]] | None = None
    ) -> AsyncIterator[tracking_pb2.TrackEvent]:
        """The camera's events from now on; ``on_ready`` runs once the consumer sits at the end."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100
        )
        await consumer.start()
        try:
            await consumer.topics()  # fetches the cluster's metadata, partitions included
            partitions = consumer.partitions_for_topic(self._topic) or set()
            assigned = [TopicPartition(self._topic, p) for p in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_end(*assigned)
            for tp in assigned:
                await consumer.position(tp)  # resolves the end offsets now, before we say ready
            if on_ready is not None:
                await on_ready()
            key = camera_id.encode()
            async for record in consumer:
                if record.key != key:
                    continue
                try:
                    yield tracking_pb2.TrackEvent.FromString(record.value or b"")
                except DecodeError:
                    log.warning("skipping a record on %s that is not a TrackEvent", self._topic)
        finally:
            await consumer.stop()
