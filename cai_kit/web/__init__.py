"""What the two local web apps (`serve` and `review`) share: the bottom of both.

- `server.py`  start an aiohttp app on a port in the running loop; serve until Ctrl-C / SIGTERM
- `guard.py`   who may call: Host, Origin (+ CORS for --cors-origin), JSON content type;
               no page may frame an answer
- `errors.py`  `ApiError` (an HTTP status and one sentence for the client)
- `wal.py`     the SQLite connection the apps' stores write through (WAL, full fsync)

May import aiohttp and the ground (`errors`); never an app, a stage, a trainer, the engine
or a backend (contract `web-knows-no-model`). Imported by `serve`, `review` and `cli`.
"""
