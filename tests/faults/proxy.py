"""A TCP fault proxy on asyncio streams (standard library only), between a client and a server on loopback.

It forwards bytes both ways and, on command, injects what networks do: ``latency(s)`` before every forwarded chunk;
``black_hole(up=..., down=...)``: drop one direction or both without closing anything (a half-open connection: the
client's writes succeed, nothing comes back); ``cut()``: reset every live connection (``SO_LINGER`` 0, then abort:
the peers see ECONNRESET); ``refuse(True)``: new connections are reset at once; ``heal()``: back to forwarding.
``up`` is client -> server, ``down`` server -> client. ``black_hole_after(pattern)``: forward the next client chunk
that holds ``pattern`` (a ``COMMIT``), then black-hole: the request reached the server, its reply never comes back.
A peer's close (FIN) in a black-holed direction is held until the heal, as a partition would hold it. Runs its loop
in a thread of its own; ``stop()`` closes all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Awaitable
from typing import Any

CHUNK = 65536


class FaultProxy:
    def __init__(self, target_port: int, listen_port: int, *, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = listen_port
        self.delay_s = 0.0
        self.drop_up = False
        self.drop_down = False
        self.refusing = False
        #: Bytes dropped by a black hole so far (each direction).
        self.dropped = {"up": 0, "down": 0}
        #: Connections accepted (and forwarded) so far: a client that reconnects shows here.
        self.accepted = 0
        #: Chunks forwarded late (``latency``) so far.
        self.delayed = 0
        #: ``black_hole_after``: the pattern armed, the directions it black-holes, and how many times it fired.
        self._trigger: tuple[bytes, bool, bool] | None = None
        self.triggered = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"fault-proxy-{listen_port}", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    # -- faults ----------------------------------------------------------------------------------------------------
    def latency(self, seconds: float) -> None:
        self.delay_s = seconds

    def black_hole(self, *, up: bool = True, down: bool = True) -> None:
        self.drop_up, self.drop_down = up, down

    def black_hole_after(self, pattern: bytes, *, up: bool = False, down: bool = True) -> None:
        """Once a client chunk holding ``pattern`` was forwarded, black-hole ``up``/``down`` (once; ``heal`` too
        disarms it)."""
        self._trigger = (pattern, up, down)

    def refuse(self, refusing: bool = True) -> None:
        self.refusing = refusing

    def cut(self) -> int:
        """Reset every live connection (both sides see a reset); returns how many."""
        return int(self._call(self._reset_all()))

    def heal(self) -> None:
        self.delay_s, self.drop_up, self.drop_down, self.refusing = 0.0, False, False, False
        self._trigger = None

    @property
    def connections(self) -> int:
        return len(self._writers) // 2

    # -- inside the loop -------------------------------------------------------------------------------------------
    def _call(self, coroutine: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)  # type: ignore[arg-type]

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        await self._reset_all()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            _reset(client_writer)
            return
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_writer)
            return
        self.accepted += 1
        self._writers |= {client_writer, server_writer}
        await asyncio.gather(
            self._pump(client_reader, server_writer, "up"),
            self._pump(server_reader, client_writer, "down"),
            return_exceptions=True,
        )
        for writer in (client_writer, server_writer):
            self._writers.discard(writer)
            writer.close()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str) -> None:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                while self._dropping(direction):
                    await asyncio.sleep(0.05)  # a partition holds the FIN too: it arrives after the heal
                writer.close()  # a clean close goes on to the other side (FIN)
                return
            if self.delay_s:
                self.delayed += 1
                await asyncio.sleep(self.delay_s)
            if self._dropping(direction):
                self.dropped[direction] += len(data)  # black-holed: never arrives, nothing is closed
                continue
            trigger = self._trigger
            if direction == "up" and trigger is not None and trigger[0] in data:
                # Before the write: this chunk still goes, and no reply to it can slip back first.
                self._trigger = None
                self.triggered += 1
                self.black_hole(up=trigger[1], down=trigger[2])
            writer.write(data)
            await writer.drain()

    def _dropping(self, direction: str) -> bool:
        return self.drop_up if direction == "up" else self.drop_down

    async def _reset_all(self) -> int:
        writers = list(self._writers)
        for writer in writers:
            _reset(writer)
        self._writers.clear()
        return len(writers) // 2


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset: linger 0, then abort (no FIN, no waiting for unsent data)."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed by the peer
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
