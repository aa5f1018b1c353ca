"""Run an aiohttp app on a port in the running loop, for `serve` and `review` alike (aiohttp
only: `review` imports it without the chat server).

    runner, port = await start(app, "127.0.0.1", 0)   # port: the one actually bound
    await until_stopped(runner)                       # Ctrl-C or SIGTERM, then cleanup
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Bind and serve in the running loop; returns the runner and the port actually bound."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    sock = site._server.sockets[0]  # type: ignore[union-attr]
    return runner, int(sock.getsockname()[1])


async def until_stopped(runner: web.AppRunner) -> None:
    """Serve until Ctrl-C (SIGINT) or SIGTERM, then clean the runner up (the app's on_cleanup)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
