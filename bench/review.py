"""Benchmark: `cai-kit review` over a 100,000-row prefs.jsonl (synthetic, schema-valid).

    python bench/review.py [--rows 100000] [--pages 20] [--keep DIR]

Writes a run whose rows look like a real judge run (a prompt, two ~400-character responses,
a verdict with both orders under two principles and the judge's raw answers: about 2.6 KB a
line), then prints:
  1. open time: `RunIndex.open` building the index from nothing (cold) and reusing it (warm),
     and the time from starting `python -m cai_kit review RUN` to the first page answered over
     HTTP (cold index, then warm); goal: open < 2 s with the index reused (a cold build validates
     every line as the toolkit's reader does: about 2 s of CPU per 100,000 rows);
  2. index reuse against a changed file: reopening after a touch (new mtime, same bytes: the
     indexed prefix hashed, nothing read), after 1,000 appended rows (the prefix hashed, only
     the new lines read), and after a same-length edit in the middle (detected, indexed again);
  3. page time over HTTP (median and max of --pages requests each): the first page, a page
     deep in the file (offset 99,950), the ties view, a text search (first and repeated), one
     row's detail, and one label written.
Run it on a quiet machine and quote `uptime`; the CPU seconds printed next to the wall times
are what the open costs on any machine (wall time on a busy one is longer).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cai_kit.records import Comparison, JudgeVerdict, Message, PreferenceRecord
from cai_kit.review.index import INDEX_NAME, RunIndex

WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wizards",
    "quietly",
    "judge",
    "boxing",
    "matches",
    "near",
    "the",
    "old",
    "harbour",
    "where",
    "sailors",
    "mend",
    "nets",
    "and",
    "count",
    "stars",
]


def _text(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(n))


def write_run(run_dir: Path, rows: int) -> int:
    """prefs.jsonl with `rows` pairs; returns its size in bytes. One record is built with the
    real models; the rest vary its fields (ids, texts, labels) in plain JSON for speed."""
    run_dir.mkdir(parents=True, exist_ok=True)
    comps = [
        Comparison(
            order=o,
            principle_id=p,
            p_first=0.7,
            letter="A",
            source="logprobs",
            raw="A. " + _text(3, 30),
        )
        for p in ("helpful", "harmless")
        for o in ("ab", "ba")
    ]
    base = json.loads(
        PreferenceRecord(
            id="x",
            prompt_id="x",
            messages=[Message(role="user", content="q")],
            response_a="a",
            response_b="b",
            verdict=JudgeVerdict(
                p_a=0.7,
                label="A",
                margin=0.4,
                position_consistent=True,
                comparisons=comps,
                principle_ids=["helpful", "harmless"],
            ),
        ).model_dump_json()
    )
    with open(run_dir / "prefs.jsonl", "w", encoding="utf-8") as fh:
        for i in range(rows):
            rec = dict(base)
            label = ("A", "B", "tie", "A", "B", "failed")[i % 6]
            margin = (i % 10) / 10
            rec.update(
                id=f"pair{i:06d}",
                prompt_id=f"p{i}",
                messages=[{"role": "user", "content": f"Question {i}: " + _text(i, 12)}],
                response_a=_text(i, 70),
                response_b=_text(i + 1, 60),
                status="failed" if label == "failed" else "ok",
                error="the judge timed out" if label == "failed" else None,
            )
            rec["verdict"] = dict(
                base["verdict"],
                label=label,
                margin=0.0 if label == "tie" else margin,
                position_consistent=i % 7 != 0,
            )
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return (run_dir / "prefs.jsonl").stat().st_size


def _get(url: str, body: dict | None = None) -> float:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json"} if data else {}
    )
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()
    return time.perf_counter() - t


def _serve(run_dir: Path) -> tuple[subprocess.Popen, str, float]:
    """Start the CLI; returns (process, url, seconds until the first page was answered)."""
    t = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cai_kit", "review", str(run_dir), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"at (http://\S+?)/ ", line)
    if not match:
        proc.kill()
        raise SystemExit(f"review did not start: {line!r}")
    url = match.group(1)
    _get(url + "/")
    _get(url + "/api/rows?kind=pair&offset=0&limit=50")
    return proc, url, time.perf_counter() - t


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far: unlike wall time, the same on
    a busy machine as on a quiet one."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _open_s(run_dir: Path) -> str:
    """'WALL s / CPU s' of one RunIndex.open."""
    t, c = time.perf_counter(), time.process_time()
    RunIndex.open(run_dir).close()
    return f"{time.perf_counter() - t:.3f} s / {time.process_time() - c:.3f} s"


def reuse(run_dir: Path) -> None:
    """Reopen the index after a touch, an append and a same-length edit in the middle."""
    path = run_dir / "prefs.jsonl"
    warm = _open_s(run_dir)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    touched = _open_s(run_dir)
    lines = path.read_bytes().splitlines(keepends=True)
    with open(path, "ab") as fh:  # 1,000 more rows, as a job still writing adds them
        for i, raw in enumerate(lines[:1000]):
            fh.write(raw.replace(b'"id": "pair', f'"id": "new{i:04d}'.encode(), 1))
    appended = _open_s(run_dir)
    data = bytearray(path.read_bytes())
    middle = data.index(b'"label": "A"', len(data) // 2)
    data[middle : middle + 12] = b'"label": "B"'  # same length, deep inside the file
    path.write_bytes(bytes(data))
    edited = _open_s(run_dir)
    index = RunIndex.open(run_dir)
    assert index.counts("pair")["views"]["all"] == len(lines) + 1000
    index.close()
    print(
        f"reopen (index only, wall / CPU): unchanged {warm}, touched (same bytes, new mtime) "
        f"{touched}, 1,000 rows appended {appended}, same-length edit in the middle "
        f"(detected, indexed again) {edited}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--pages", type=int, default=20)
    ap.add_argument("--keep", type=Path, help="write the run here (kept) instead of a temp dir")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        t = time.perf_counter()
        size = write_run(run_dir, args.rows)
        print(
            f"wrote {args.rows:,} rows ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.1f} s; uptime: {os.getloadavg()[0]:.2f}"
        )

        (run_dir / INDEX_NAME).unlink(missing_ok=True)
        t, c = time.perf_counter(), time.process_time()
        RunIndex.open(run_dir).close()
        cold, cold_cpu = time.perf_counter() - t, time.process_time() - c
        t = time.perf_counter()
        RunIndex.open(run_dir).close()
        warm = time.perf_counter() - t
        print(
            f"open (index only): cold {cold:.2f} s wall / {cold_cpu:.2f} s CPU, warm {warm:.3f} s; index "
            f"{(run_dir / INDEX_NAME).stat().st_size / 1e6:.1f} MB"
        )

        reuse(run_dir)

        (run_dir / INDEX_NAME).unlink()
        proc, _, first = _serve(run_dir)
        first_cpu = _cpu_s(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        proc, url, again = _serve(run_dir)
        again_cpu = _cpu_s(proc.pid)
        print(
            f"open (`cai-kit review RUN` started -> first page served): cold index {first:.2f} s wall / "
            f"{first_cpu:.2f} s CPU, warm index {again:.2f} s wall / {again_cpu:.2f} s CPU"
        )
        try:
            deep = max(0, args.rows - 50)
            cases = {
                "first page": "/api/rows?kind=pair&offset=0&limit=50",
                f"page at offset {deep:,}": f"/api/rows?kind=pair&offset={deep}&limit=50",
                "ties view, page 100": "/api/rows?kind=pair&view=ties&offset=5000&limit=50",
                "summary (counts, histogram)": "/api/summary?reviewer=ana",
                "one row's detail": f"/api/row?kind=pair&id=pair{deep:06d}",
            }
            for name, path in cases.items():
                times = [_get(url + path) for _ in range(args.pages)]
                print(
                    f"  {name:32s} median {1000 * statistics.median(times):7.1f} ms, max {1000 * max(times):7.1f} ms"
                )
            first_search = _get(url + "/api/rows?kind=pair&q=Question%2099999:&limit=50")
            times = [
                _get(url + "/api/rows?kind=pair&q=Question%2099999:&limit=50")
                for _ in range(args.pages)
            ]
            print(
                f"  {'text search (first / repeated)':32s} {1000 * first_search:7.1f} ms / median {1000 * statistics.median(times):.1f} ms"
            )
            times = [
                _get(
                    url + "/api/label",
                    {"reviewer": "ana", "kind": "pair", "id": f"pair{i:06d}", "label": "A"},
                )
                for i in range(args.pages)
            ]
            print(
                f"  {'label written (fsync)':32s} median {1000 * statistics.median(times):7.1f} ms, max {1000 * max(times):7.1f} ms"
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)


if __name__ == "__main__":
    main()
