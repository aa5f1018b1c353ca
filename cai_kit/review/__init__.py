"""`cai-kit review RUN`: a page to read a run's pairs and revisions and label them, and the
labels store that `review export-gold`, `judge-report --gold` and `export --prefer-human` read.

- `app.py`     the aiohttp app: the page and its JSON API (/api/summary, rows, row, label)
- `index.py`   byte-offset index of prefs.jsonl / revisions.jsonl (SQLite; lines read by
               `io.parse_record`, reuse checked by a digest), search, diff
- `labels.py`  human labels in RUN/labels.sqlite (WAL, through `cai_kit.wal`, upsert), folding,
               gold export
- `page.html`  the review page (plain HTML/JS, inline SVG charts, nothing from the network)

Started by `web.server`, guarded by `web.guard`, errors answered by `web.errors`.

May import `web` and the ground (`io`, `records`, `errors`); never `serve` (its sibling: the
two apps share only `web`), a stage, the engine, a backend or torch. Imported only by `cli`.
"""
