"""What the two local web apps (`serve` and `review`) share: the bottom of both.

- `server.py`  start an aiohttp app on a port in the running loop; serve until Ctrl-C / SIGTERM
- `guard.py`   who may call: Host, Origin (+ CORS for --cors-origin), JSON bodies (`read_json`);
               no page may frame an answer
- `errors.py`  `ApiError` (an HTTP status and one sentence for the client) and the one error
               middleware that answers it, aiohttp's 4xx, a 413 and a bug (500, logged) alike

May import aiohttp and the ground (`errors`); never an app, a stage, a trainer, the engine
or a backend (contract `web-knows-no-model`). Imported by `serve`, `review` and `cli`.
"""
