"""Kafka plumbing shared by the daemons that produce or consume frames: topic names,
producer/consumer settings and topic creation. Works unchanged against Apache Kafka and
the local Tansu broker (whose build lacks InitProducerId: idempotence must be off there)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

FRAMES_TOPIC = "carmesh.frames.v1"
DETECTIONS_TOPIC = "carmesh.detections.v1"
FRAMES_DLQ_TOPIC = "carmesh.frames.dlq.v1"
# FrameDetections whose store failed without an outage (the feature service's last resort).
DETECTIONS_DLQ_TOPIC = "carmesh.detections.dlq.v1"

# Full-HD JPEGs are 0.2-1 MB; leave room for 4K frames and annotations.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

# Per-partition buffer of a producer: aiokafka's 16 KB default makes every frame wait for the
# previous one to be sent; 1 MiB batches several frames and stays under Kafka's default
# message.max.bytes (a single bigger frame still goes alone, as its own batch).
BATCH_BYTES = 1024 * 1024

DEFAULT_PARTITIONS: Mapping[str, int] = {
    FRAMES_TOPIC: 4,
    DETECTIONS_TOPIC: 4,
    FRAMES_DLQ_TOPIC: 1,
    DETECTIONS_DLQ_TOPIC: 1,
}


def create_producer(
    bootstrap: str,
    *,
    client_id: str,
    idempotence: bool,
    linger_ms: int = 5,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_batch_bytes: int = BATCH_BYTES,
) -> AIOKafkaProducer:
    """acks=all always; idempotence where the broker supports it (not started: call ``start()``)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        acks="all",
        enable_idempotence=idempotence,
        linger_ms=linger_ms,
        max_request_size=max_message_bytes,
        max_batch_size=max_batch_bytes,
    )


def create_consumer(
    bootstrap: str,
    *topics: str,
    group_id: str,
    client_id: str,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    fetch_max_wait_ms: int = 50,
    **kwargs: object,
) -> AIOKafkaConsumer:
    """Manual commits only: callers commit an offset once its effect is durable.

    ``fetch_max_wait_ms`` caps how long the broker may hold a fetch: Tansu holds it for the
    whole wait even when records are ready (500 ms by default), which starved consumers."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=client_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=max_message_bytes,
        fetch_max_bytes=max(max_message_bytes, 52428800),
        fetch_max_wait_ms=fetch_max_wait_ms,
        **kwargs,  # type: ignore[arg-type]
    )


async def ensure_topics(
    bootstrap: str, partitions: Mapping[str, int] = DEFAULT_PARTITIONS, replication_factor: int = 1
) -> None:
    """Creates missing topics with their partition counts; existing ones are left as they are."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="carmesh-admin")
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(name, num_partitions=count, replication_factor=replication_factor)
            for name, count in partitions.items()
            if name not in existing
        ]
        if missing:
            try:
                await admin.create_topics(missing)
                log.info("created topics %s", ", ".join(t.name for t in missing))
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
