"""`cai-kit serve`: an OpenAI-compatible server over any backend, a feedback page, and the
feedback store that `cai-kit export kto|prefs FEEDBACK_DB` turns into training data.

- `app.py`       the aiohttp app: /v1/chat/completions (+SSE), /v1/models, /v1/feedback, /
- `protocol.py`  request checking and OpenAI response shapes
- `guard.py`     who may call: Host, Origin (+ CORS for --cors-origin), JSON content type;
                 no page may frame an answer
- `store.py`     completions and ratings in SQLite (WAL)
- `feedback.py`  rated completions -> KTO rows / preference pairs + dataset card
- `page.html`    the chat page (plain HTML/JS, no build step)

`cai-kit review RUN`: a page to read a run's pairs and revisions and label them.

- `review.py`        the aiohttp app: the page and its JSON API (/api/summary, rows, row, label)
- `review_index.py`  byte-offset index of prefs.jsonl / revisions.jsonl (SQLite; lines read by
                     `io.parse_record`, reuse checked by a digest), search, diff
- `labels.py`        human labels in RUN/labels.sqlite (WAL, upsert), folding, gold export
- `guard.py`         Host / Origin / Content-Type checks and no framing, for a loopback page
- `review.html`      the review page (plain HTML/JS, inline SVG charts, nothing from the network)

`server.py`: start either app on a port, and serve until Ctrl-C / SIGTERM.

May import `stages` (export layouts), `engine`, `llm` and the ground. Imported only by `cli`.
"""
