"""Upstream daemons: a pool of replicas per service, each watched through grpc.health.v1.

Calls go round-robin over the replicas that last reported SERVING for the service; a
replica that fails a call is re-checked at once instead of at the next interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from gateway.errors import NoHealthyUpstream
from gateway.metrics import GatewayMetrics
from kit.clients import check_health
from kit.mesh_tls import MeshTls, mesh_channel
from kit.server import channel_options

log = logging.getLogger(__name__)

# Reconnect quickly to a replica that comes back: gRPC's default backoff grows to 120 s. Calls fail
# UNAVAILABLE while the channel waits out its backoff, even once the replica is SERVING again, so the
# cap is the longest such stale window (5 s left up to 4 s of failed calls after a registry restart,
# tests/faults/test_kill_registry.py); a dead replica costs one connect attempt a second.
_RECONNECT_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


# The least time between two on-demand looks at a pool with no healthy replica (see candidates()).
_FRESH_LOOK_SPACING_S = 0.2


class Replica:
    def __init__(self, address: str, max_message_bytes: int, tls: MeshTls | None) -> None:
        self.address = address
        self.channel = mesh_channel(address, tls, [*channel_options(max_message_bytes), *_RECONNECT_OPTIONS])
        self.healthy = False
        self.recheck = asyncio.Event()

    def connected(self) -> bool:
        return self.channel.get_state(try_to_connect=False) == grpc.ChannelConnectivity.READY


class UpstreamPool:
    """The replicas of one upstream service (``service`` is its full proto name)."""

    def __init__(
        self,
        service: str,
        label: str,
        addresses: Sequence[str],
        *,
        max_message_bytes: int,
        check_interval_s: float,
        metrics: GatewayMetrics,
        tls: MeshTls | None,
        on_change: Callable[[UpstreamPool], Awaitable[None]] | None = None,
    ) -> None:
        self.service = service
        self.label = label
        self.replicas = [Replica(address, max_message_bytes, tls) for address in addresses]
        self._interval_s = check_interval_s
        self._check_timeout_s = min(max(check_interval_s, 1.0), 5.0)
        self._metrics = metrics
        self._on_change = on_change
        self._next = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._look: asyncio.Future[list[None]] | None = None
        self._looked_at = -_FRESH_LOOK_SPACING_S

    @property
    def healthy_count(self) -> int:
        return sum(replica.healthy for replica in self.replicas)

    async def start(self) -> None:
        """Checks every replica once (so the first calls see real states), then keeps watching."""
        await asyncio.gather(*(self._check(replica) for replica in self.replicas))
        self._tasks = [asyncio.create_task(self._watch(replica)) for replica in self.replicas]

    async def close(self) -> None:
        tasks: list[asyncio.Future[Any]] = [*self._tasks, *([self._look] if self._look is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(replica.channel.close(None) for replica in self.replicas))

    async def candidates(self) -> list[Replica]:
        """Healthy replicas in round-robin order (the first is this call's turn).

        With none healthy, the replicas are looked at once more before the call is refused: the watchers
        look only every interval, and a call right after a replica came up (a start, a model loaded, a
        recovery) must not fail on the pool's stale view. Concurrent calls share one look, and looks are
        at least ``_FRESH_LOOK_SPACING_S`` apart, so an outage does not turn every call into a health check.
        """
        healthy = [replica for replica in self.replicas if replica.healthy]
        if not healthy:
            await self._look_now()
            healthy = [replica for replica in self.replicas if replica.healthy]
        if not healthy:
            addresses = ", ".join(replica.address for replica in self.replicas)
            raise NoHealthyUpstream(
                f"no healthy {self.label} replica (of {len(self.replicas)}) for {self.service} at {addresses}",
                metadata={"service": self.service, "replicas": len(self.replicas)},
            )
        start = self._next % len(healthy)
        self._next += 1
        return healthy[start:] + healthy[:start]

    async def _look_now(self) -> None:
        if self._look is None or self._look.done():
            if time.monotonic() - self._looked_at < _FRESH_LOOK_SPACING_S:
                return
            self._looked_at = time.monotonic()
            self._look = asyncio.ensure_future(asyncio.gather(*(self._check(r) for r in self.replicas)))
        # Shielded: a caller that gives up (deadline, cancel) must not cancel the look the others await.
        with contextlib.suppress(Exception):
            await asyncio.shield(self._look)

    def suspect(self, replica: Replica) -> None:
        """A call to ``replica`` failed as if it were down: check it now rather than at the next interval."""
        replica.recheck.set()

    async def _check(self, replica: Replica) -> None:
        healthy = await check_health(replica.channel, self.service, timeout_s=self._check_timeout_s)
        self._metrics.upstream_healthy.labels(self.service, replica.address).set(1 if healthy else 0)
        if healthy == replica.healthy:
            return
        replica.healthy = healthy
        log.info(
            "%s replica %s is %s (%d of %d healthy)",
            self.label,
            replica.address,
            "SERVING" if healthy else "not serving",
            self.healthy_count,
            len(self.replicas),
        )
        if self._on_change is not None:
            await self._on_change(self)

    async def _watch(self, replica: Replica) -> None:
        while True:
            replica.recheck.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(replica.recheck.wait(), self._interval_s)
            try:
                await self._check(replica)
            except Exception:
                # A watcher must outlive any surprise; the next round tries again.
                log.exception("health check of %s replica %s failed", self.label, replica.address)
