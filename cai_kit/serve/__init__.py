"""`cai-kit serve`: an OpenAI-compatible server over any backend, a feedback page, and the
feedback store that `cai-kit export kto|prefs FEEDBACK_DB` turns into training data.

- `app.py`       the aiohttp app: /v1/chat/completions (+SSE), /v1/models, /v1/feedback, /
- `protocol.py`  request checking and OpenAI response shapes
- `store.py`     completions and ratings in SQLite (WAL, through `cai_kit.wal`)
- `feedback.py`  rated completions -> KTO rows / preference pairs + dataset card
- `page.html`    the chat page (plain HTML/JS, no build step)

Started by `web.server`, guarded by `web.guard`, errors answered by `web.errors`.

May import `web`, `stages` (export layouts), `engine`, `llm` and the ground; never `review`
(its sibling: the two apps share only `web`). Imported only by `cli`.
"""
