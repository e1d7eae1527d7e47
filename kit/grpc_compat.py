"""A workaround for a grpc.aio client bug that turns a server's status into INTERNAL.

grpc/grpc#36066 (fix proposed in grpc/grpc#43486, not released in the grpcio we pin): when a
server ends a client-streaming call early (it rejects the first message, say) while the client
is still writing, the write fails in Core, and ``_StreamRequestMixin._write`` calls
``set_internal_error`` unconditionally. If the server's status was already on its way, it is
replaced by ``INTERNAL: Internal error from Core``. The gateway forwards client streams to the
daemons, so its clients saw INTERNAL instead of, e.g., INVALID_ARGUMENT.

:func:`keep_server_status_on_failed_writes` replaces that one method with a copy whose failed
write waits briefly for the status Core is delivering and raises it; only when none comes (the
case #34148 guarded against: a batch rejected before the call started) does it fall back to the
INTERNAL status, as grpcio does. The gateway calls it once at start-up.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from grpc import _common  # type: ignore[attr-defined]
from grpc._cython import cygrpc
from grpc.aio import _call

log = logging.getLogger(__name__)

# How long a failed write waits for the status Core is about to deliver. Core delivers it in the
# same event-loop turn or the next when the server has sent it.
STATUS_WAIT_S = 1.0
_MARK = "_carmesh_keeps_server_status"


async def _write(self: Any, request: Any) -> None:
    # grpcio's _StreamRequestMixin._write (1.71-1.85), except for the InternalError branch.
    if self.done():
        raise asyncio.InvalidStateError(_call._RPC_ALREADY_FINISHED_DETAILS)
    if self._done_writing_flag:
        raise asyncio.InvalidStateError(_call._RPC_HALF_CLOSED_DETAILS)
    if not self._metadata_sent.is_set():
        await self._metadata_sent.wait()
        if self.done():
            await self._raise_for_status()
    serialized_request = _common.serialize(request, self._request_serializer)
    try:
        await self._cython_call.send_serialized_message(serialized_request)
    except cygrpc.InternalError as err:
        if not self.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._cython_call.status()), STATUS_WAIT_S)
            except TimeoutError:
                self._cython_call.set_internal_error(str(err))
        await self._raise_for_status()
    except asyncio.CancelledError:
        if not self.cancelled():
            self.cancel()
        raise


def keep_server_status_on_failed_writes() -> bool:
    """Installs the workaround (idempotent); returns False when grpcio's internals have moved on
    (then nothing is changed, and the gateway logs that the upstream bug may show)."""
    mixin = getattr(_call, "_StreamRequestMixin", None)
    if mixin is None or not hasattr(mixin, "_write"):
        log.warning("grpc.aio internals changed: the grpc/grpc#36066 workaround is not installed")
        return False
    if not getattr(mixin._write, _MARK, False):
        setattr(_write, _MARK, True)
        mixin._write = _write
    return True
