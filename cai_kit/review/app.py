"""The `cai-kit review RUN` web app: a page over a run's pairs and revisions, and human labels.

    index = RunIndex.open(run_dir); labels = LabelStore(run_dir / "labels.sqlite")
    app = create_review_app(index, labels, ReviewConfig(host="127.0.0.1"))
    runner, port = await start(app, "127.0.0.1", 0)   # start: web/server.py

Routes (JSON; errors are `{"error": {"message", "type", "code"}}` with a 4xx/5xx status, as
`serve`'s (`web/errors.py`); a bad line in the run's files, e.g. one appended while the page is
open, is a 409 naming file:line):
  GET  /                         the page (static HTML, nothing loaded from the network)
  GET  /api/summary?reviewer=R   run, kinds, counts per view and principle, judge labels,
                                 human labels (R's and everyone's), margin histogram
  GET  /api/rows?kind=pair&view=ties&principle=P&q=TEXT&offset=0&limit=50&reviewer=R
                                 one page of row summaries, each with R's label
  GET  /api/row?kind=pair&id=ID&reviewer=R
                                 one full record (read at its byte offset), every reviewer's
                                 label of it, its position in the `all` view (the page's
                                 `#kind=pair&id=ID` opens it there), and for a revision the
                                 word diff initial -> final
  POST /api/label                {"reviewer", "kind": "pair"|"revision", "id", "label", "note"}
                                 -> 200 once committed (upsert: never duplicated)

Every request passes the guard (`web/guard.py`): a Host naming this server, no other page's
Origin, JSON bodies only.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

from aiohttp import web

from cai_kit.errors import DataError
from cai_kit.review.index import VIEWS, RunIndex, word_diff
from cai_kit.review.labels import (
    LABELS,
    MAX_NOTE_CHARS,
    LabelStore,
    check_label,
    check_reviewer,
)
from cai_kit.web.errors import ApiError, error_middleware
from cai_kit.web.guard import check_json_body, guard, read_json

log = logging.getLogger("cai_kit.review")

_CSP = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self' data:"


@dataclass(frozen=True)
class ReviewConfig:
    host: str = "127.0.0.1"
    max_body_bytes: int = 64 * 1024
    max_note_chars: int = MAX_NOTE_CHARS
    max_page: int = 200


INDEX = web.AppKey("index", RunIndex)
LABELSTORE = web.AppKey("labels", LabelStore)
CONFIG = web.AppKey("config", ReviewConfig)
POOL = web.AppKey("pool", ThreadPoolExecutor)


@web.middleware
async def _json_bodies(request: web.Request, handler: Any) -> web.StreamResponse:
    """A body is JSON or nothing (a page can send text/plain without asking first: guard.py)."""
    if request.method in ("POST", "PUT", "PATCH", "DELETE"):
        check_json_body(request)
    return await handler(request)


async def _run(request: web.Request, fn: Any, *args: Any) -> Any:
    """fn(*args) on the app's one database thread (every read of the run's files goes here)."""
    try:
        return await asyncio.get_running_loop().run_in_executor(request.app[POOL], fn, *args)
    except DataError as exc:  # the run's files, e.g. a bad line appended while reviewing
        raise ApiError(409, str(exc), "data_error") from None


def _kind(request: web.Request) -> str:
    kind = request.query.get("kind", "pair")
    if kind not in request.app[INDEX].kinds:
        have = ", ".join(request.app[INDEX].kinds)
        raise ApiError(400, f"kind must be one of the run's kinds ({have}), not {kind!r}.")
    return kind


def _int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a whole number, not {raw!r}.") from None
    if not lo <= value <= hi:
        raise ApiError(400, f"{name} must be from {lo} to {hi}, not {value}.")
    return value


def _reviewer(request: web.Request) -> str | None:
    raw = request.query.get("reviewer")
    if not raw:
        return None
    try:
        return check_reviewer(raw)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None


async def page(request: web.Request) -> web.Response:
    html = files("cai_kit.review").joinpath("page.html").read_text(encoding="utf-8")
    return web.Response(
        text=html, content_type="text/html", headers={"Content-Security-Policy": _CSP}
    )


def _summary(request: web.Request, reviewer: str | None) -> dict[str, Any]:
    index, labels = request.app[INDEX], request.app[LABELSTORE]
    index.refresh()  # a job may still be appending
    kinds = {}
    for kind in index.kinds:
        counts = index.counts(kind)
        lk = kind  # the index's kinds are the label kinds
        ids = index.ids(kind)
        mine = labels.labelled_ids(reviewer, lk) & ids if reviewer else set()
        counts["views"]["unlabelled"] = len(ids) - len(mine) if reviewer else len(ids)
        counts["human_labels"] = labels.counts(lk, reviewer) if reviewer else {}
        counts["all_human_labels"] = labels.counts(lk)
        counts["label_choices"] = list(LABELS[lk])
        counts["view_names"] = list(VIEWS[kind])
        kinds[kind] = counts
    return {
        "run": str(index.run_dir),
        "kinds": kinds,
        "labels_db": str(labels.path),
        "low_margin": index.low_margin,
        "reviewers": labels.reviewers(),
        "max_note_chars": request.app[CONFIG].max_note_chars,
    }


async def summary(request: web.Request) -> web.Response:
    return web.json_response(await _run(request, _summary, request, _reviewer(request)))


def _rows(request: web.Request, kind: str, reviewer: str | None) -> dict[str, Any]:
    index, labels, cfg = request.app[INDEX], request.app[LABELSTORE], request.app[CONFIG]
    index.refresh()  # a stat when nothing changed
    view = request.query.get("view", "all")
    if view not in VIEWS[kind]:
        raise ApiError(400, f"view must be one of {', '.join(VIEWS[kind])}, not {view!r}.")
    if view == "unlabelled" and not reviewer:
        raise ApiError(400, "the unlabelled view needs reviewer=YOUR_NAME.")
    q = request.query.get("q", "")
    if len(q) > 500:
        raise ApiError(400, "q (the search text) is longer than 500 characters.")
    exclude = labels.labelled_ids(reviewer, kind) if view == "unlabelled" and reviewer else None
    res = index.query(
        kind,
        view=view,
        principle=request.query.get("principle") or None,
        q=q,
        offset=_int(request, "offset", 0, 0, 10**9),
        limit=_int(request, "limit", 50, 1, cfg.max_page),
        exclude=exclude,
    )
    mine = labels.for_rows(reviewer, kind, [r["id"] for r in res.rows]) if reviewer else {}
    for r in res.rows:
        r["human"], r["note"] = mine.get(r["id"], (None, None))
    return {"total": res.total, "rows": res.rows}


async def rows(request: web.Request) -> web.Response:
    kind = _kind(request)
    return web.json_response(await _run(request, _rows, request, kind, _reviewer(request)))


def _row(request: web.Request, kind: str, row_id: str) -> dict[str, Any]:
    index, labels = request.app[INDEX], request.app[LABELSTORE]
    index.refresh()
    rec = index.record(kind, row_id)
    if rec is None:
        raise ApiError(404, f"No {kind} with id {row_id[:100]!r} in {index.run_dir}.")
    out: dict[str, Any] = {"record": rec, "position": index.position(kind, row_id)}
    if kind == "revision":
        out["diff"] = word_diff(rec.get("initial_response") or "", rec.get("final_response") or "")
    out["labels"] = [
        {"reviewer": lab.reviewer, "label": lab.label, "note": lab.note}
        for lab in labels.of_row(kind, row_id)
    ]
    return out


async def row(request: web.Request) -> web.Response:
    kind = _kind(request)
    row_id = request.query.get("id", "")
    if not row_id:
        raise ApiError(400, "id (a row id) is required.")
    return web.json_response(await _run(request, _row, request, kind, row_id))


async def put_label(request: web.Request) -> web.Response:
    index, labels, cfg = request.app[INDEX], request.app[LABELSTORE], request.app[CONFIG]
    body = await read_json(request)
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    kind, row_id, label, note = (
        body.get("kind"),
        body.get("id"),
        body.get("label"),
        body.get("note"),
    )
    try:
        reviewer = check_reviewer(body.get("reviewer"))
        check_label(kind if isinstance(kind, str) else repr(kind), label, note, cfg.max_note_chars)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    if not isinstance(row_id, str) or not row_id:
        raise ApiError(400, "id must be the id of a row of this run.")
    if kind not in index.kinds or not await _run(request, index.has, kind, row_id):
        raise ApiError(404, f"No {kind} with id {row_id[:100]!r} in {index.run_dir}.")
    saved = await _run(request, labels.put, reviewer, kind, row_id, label, note)
    return web.json_response(
        {
            "ok": True,
            "reviewer": reviewer,
            "kind": kind,
            "id": row_id,
            "label": label,
            "note": saved.note,
        }
    )


def create_review_app(index: RunIndex, labels: LabelStore, config: ReviewConfig) -> web.Application:
    app = web.Application(
        middlewares=[
            error_middleware(
                log, f"The request body is larger than {config.max_body_bytes} bytes."
            ),
            guard((), (), flags=False),
            _json_bodies,
        ],
        client_max_size=config.max_body_bytes,
    )
    app[INDEX], app[LABELSTORE], app[CONFIG] = index, labels, config
    # One thread for the index and the labels: SQLite has one writer, and the index one reader.
    app[POOL] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cai-kit-review-db")
    app.router.add_get("/", page)
    app.router.add_get("/api/summary", summary)
    app.router.add_get("/api/rows", rows)
    app.router.add_get("/api/row", row)
    app.router.add_post("/api/label", put_label)

    async def close(_: web.Application) -> None:
        app[POOL].shutdown(wait=True)

    app.on_cleanup.append(close)
    return app
