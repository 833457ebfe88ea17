"""Prepare lecture mode before class: compute everything the lecture shows and keep it in the server's result store
(app/lecture.py; the same keys the running app reads), so the lecture opens at once and no step waits.

    .venv/bin/python -m app.lecture_prepare                       # the default settings and batch
    .venv/bin/python -m app.lecture_prepare --query "ratio=0.3"   # a link's settings (its part after '?')

Run it as the user the server runs as, with the same $PPCORE_CACHE (and $PPCORE_RESULT_CACHE_MB, which must not be
0): the store lives there. A second run reads everything back and says so. Prints one line per step of progress.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from urllib.parse import parse_qs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--query", default="", help="settings as a link's query string (e.g. 'ratio=0.3&seq_len=48'); "
                                                "default: the app's defaults")
    args = ap.parse_args(argv)
    logging.getLogger("streamlit").setLevel(logging.ERROR)  # no "bare mode" warnings: there is no page here

    from app import lecture_job, stored
    from app.lecture import PARTS, TIMED, lecture_settings
    from app.state import from_query

    s, problems = from_query({k: v[-1] for k, v in parse_qs(args.query).items()})
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    s, notes = lecture_settings(s)
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if stored.store() is None:
        print("The result store is off ($PPCORE_RESULT_CACHE_MB=0) or its folder cannot be created: nothing would be "
              "kept for the server. Set PPCORE_RESULT_CACHE_MB (default 512) and PPCORE_CACHE as the server has "
              "them.", file=sys.stderr)
        return 2
    last = [-1.0]

    def say(fraction: float, text: str) -> None:
        if fraction - last[0] >= 0.02 or fraction >= 1.0:  # about fifty lines at most
            last[0] = fraction
            print(f"{fraction:6.1%}  {text}", flush=True)

    t0 = time.perf_counter()
    try:
        data = lecture_job.build(s, say)
    except Exception as e:  # noqa: BLE001 — one line, no traceback, as the page would show it
        from app.messages import failure

        print(f"The lecture could not be prepared: {failure(e)}", file=sys.stderr)
        return 1
    for part, what in PARTS.items():
        state = f"FAILED: {data.errors[part]}" if part in data.errors else data.when.get(part, "?")
        print(f"{what}: {state}" + (" (a wall-time measurement of this machine)" if part in TIMED else ""))
    print(f"ready in {time.perf_counter() - t0:.1f} s, kept in {stored.store().root}")  # type: ignore[union-attr]
    return 1 if data.errors else 0


if __name__ == "__main__":
    sys.exit(main())
