"""kit.kafka against the real local broker: topics with partitions, large frames, manual commits."""

from __future__ import annotations

import asyncio
import os

from aiokafka.admin import AIOKafkaAdminClient

from kit.kafka import create_consumer, create_producer, ensure_topics


async def test_topics_large_messages_and_resume_from_commit(kafka_bootstrap: str) -> None:
    topic = "carmesh.kittest.v1"
    await ensure_topics(kafka_bootstrap, {topic: 3})
    await ensure_topics(kafka_bootstrap, {topic: 3})  # idempotent
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
        assert len(described[0]["partitions"]) == 3
    finally:
        await admin.close()

    payload = os.urandom(3 * 1024 * 1024)  # bigger than Kafka's 1 MB default
    producer = create_producer(kafka_bootstrap, client_id="kit-test", idempotence=False)
    await producer.start()
    try:
        for i in range(4):
            await producer.send_and_wait(topic, payload[: len(payload) - i], key=b"cam-1")
    finally:
        await producer.stop()

    async def read(n: int, commit_after: int | None) -> list[int]:
        consumer = create_consumer(kafka_bootstrap, topic, group_id="kit-test-group", client_id="kit-test")
        await consumer.start()
        sizes: list[int] = []
        try:
            async with asyncio.timeout(30):
                while len(sizes) < n:
                    record = await consumer.getone()
                    sizes.append(len(record.value))
                    if commit_after is not None and len(sizes) == commit_after:
                        await consumer.commit()
        finally:
            await consumer.stop()
        return sizes

    first = await read(2, commit_after=2)
    assert first == [len(payload), len(payload) - 1]
    # A restarted member of the group resumes after the committed offset, not before it.
    assert await read(2, commit_after=None) == [len(payload) - 2, len(payload) - 3]
