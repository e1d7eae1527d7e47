"""The local services really run and answer: the fixtures every integration test builds on."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import urllib.request

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from devstack import services
from tests.helpers import free_port


async def test_redis_round_trip(redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    try:
        await client.set("carmesh:test", "1", ex=10)
        assert await client.get("carmesh:test") == b"1"
        assert 0 < await client.ttl("carmesh:test") <= 10
    finally:
        await client.aclose()


async def test_postgres_has_carmesh_database(postgres_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await conn.fetchval("select current_database()") == "carmesh"
        await conn.execute("create temp table t (id int primary key)")
        await conn.execute("insert into t values (1) on conflict do nothing")
        await conn.execute("insert into t values (1) on conflict do nothing")
        assert await conn.fetchval("select count(*) from t") == 1
    finally:
        await conn.close()


async def test_tansu_produce_consume_with_consumer_group(kafka_bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("carmesh.test.v1", num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait("carmesh.test.v1", f"m{i}".encode(), key=f"cam{i % 3}".encode())
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        "carmesh.test.v1",
        bootstrap_servers=kafka_bootstrap,
        group_id="carmesh-test",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: set[bytes] = set()
    try:
        async with asyncio.timeout(30):
            while len(seen) < 10:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    seen.update(r.value for r in records)
            await consumer.commit()
    finally:
        await consumer.stop()
    assert seen == {f"m{i}".encode() for i in range(10)}


def test_mlflow_server_answers(mlflow_uri: str) -> None:
    with urllib.request.urlopen(f"{mlflow_uri}/api/2.0/mlflow/experiments/search?max_results=5") as reply:
        body = json.loads(reply.read())
    assert any(e["name"] == "Default" for e in body.get("experiments", []))


def test_mlflow_runs_on_postgresql_when_configured(stack_config: services.StackConfig, postgres_dsn: str) -> None:
    """`CARMESH_STACK_MLFLOW_BACKEND_URI=postgresql+psycopg2://...` puts MLflow's store in PostgreSQL."""
    backend = postgres_dsn.replace("postgresql://", "postgresql+psycopg2://").rsplit("/", 1)[0] + "/mlflow"
    cfg = dataclasses.replace(
        stack_config,
        ports=dataclasses.replace(stack_config.ports, mlflow=free_port()),
        run_dir=stack_config.run_dir / "mlflow-pg",
        mlflow_backend_uri=backend,
    )
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    proc = services.mlflow(cfg)
    proc.start()
    try:
        proc.wait_ready()
        request = urllib.request.Request(
            f"{cfg.mlflow_uri}/api/2.0/mlflow/experiments/create",
            method="POST",
            data=json.dumps({"name": "pg-backed"}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request) as reply:
            assert json.loads(reply.read())["experiment_id"]
    finally:
        proc.stop()
    rows = subprocess.run(
        [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(cfg.ports.postgres),
            "-U",
            "postgres",
            "-d",
            "mlflow",
            "-Atc",
            "select name from experiments",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **stack_config.postgres_env()},
    )
    assert "pg-backed" in rows.stdout.split()
