"""Pure text formatting for cachectl's coordinator commands: sizes, rates, ETAs, tables."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def _scale(n: float) -> tuple[float, str]:
    value, unit = float(n), "B"
    for u in _UNITS:
        if abs(value) < 1024:
            break
        value, unit = value / 1024, u
    return value, unit


def _num(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def format_bytes(n: float | None) -> str:
    """Return `n` bytes as e.g. '512 B', '1.2 GiB', '310 MiB' ('-' for None)."""
    if n is None:
        return "-"
    value, unit = _scale(n)
    return f"{_num(value, unit)} {unit}"


def format_done_total(done: float, total: float) -> str:
    """Return a done/total byte pair in the total's unit, e.g. '1.2/2.6 GiB'."""
    value, unit = _scale(total)
    div = total / value if value else 1.0
    return f"{_num(done / div, unit)}/{_num(value, unit)} {unit}"


def format_rate(bytes_per_s: float | None) -> str:
    """Return a rate as e.g. '310 MiB/s' ('-' if unknown)."""
    return "-" if bytes_per_s is None else format_bytes(bytes_per_s) + "/s"


def format_duration(s: float | None) -> str:
    """Return seconds as '5s', '1m05s' or '2h03m' ('-' if unknown or negative)."""
    if s is None or s < 0 or not math.isfinite(s):
        return "-"
    n = int(s + 0.5)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m{n % 60:02d}s"
    return f"{n // 3600}h{n % 3600 // 60:02d}m"


def format_time(ts: float | None) -> str:
    """Return a Unix time as local 'YYYY-MM-DD HH:MM:SS' ('-' for None)."""
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_percent(pct: float) -> str:
    """Return a percentage rounded down, so '100%' means all of it."""
    return f"{math.floor(pct)}%"


def percent(p: Mapping[str, Any], state: str = "") -> float:
    """Return how much of a job is done, 0-100, by bytes (by blocks if it has no bytes)."""
    if state == "complete":
        return 100.0
    for done, total in (("bytes_done", "bytes_total"), ("blocks_done", "blocks_total")):
        if p.get(total):
            return max(0.0, min(100.0, 100.0 * float(p.get(done) or 0) / float(p[total])))
    return 0.0


def _bytes(p: Mapping[str, Any]) -> str:
    return format_done_total(p.get("bytes_done") or 0, p.get("bytes_total") or 0)


def _live(state: str) -> bool:
    return state in ("pending", "running")


def job_rate(p: Mapping[str, Any], state: str) -> str:
    """Return a job's rate: over the last seconds while it runs, its average once it ended."""
    if _live(state):
        return format_rate(p.get("rate_bytes_per_s") if state == "running" else None)
    avg = p.get("average_bytes_per_s")
    return format_rate(avg) + " avg" if avg else "-"


def job_eta(p: Mapping[str, Any], state: str) -> str:
    """Return a running job's ETA ('-' when it is unknown or the job is not running)."""
    return format_duration(p.get("eta_s") if state == "running" else None)


def progress_line(job: Mapping[str, Any], bar_width: int = 20) -> str:
    """Return one progress line of a job: bar (if `bar_width`), %, bytes, rate, ETA, blocks."""
    p, state = job.get("progress") or {}, str(job.get("state", "?"))
    pct = percent(p, state)
    parts = []
    if bar_width > 0:
        filled = int(pct / 100 * bar_width)
        parts.append("[" + "#" * filled + "." * (bar_width - filled) + "]")
    parts += [format_percent(pct).rjust(4), _bytes(p),
              job_rate(p, state), "ETA " + job_eta(p, state),
              f"blocks {p.get('blocks_done') or 0}/{p.get('blocks_total') or 0}",
              f"failed {p.get('blocks_failed') or 0}"]
    if state != "running" or job.get("cancel_requested"):
        parts.append(f"({'cancelling' if job.get('cancel_requested') and _live(state) else state})")
    return " ".join(parts)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                 right: Sequence[int] = ()) -> list[str]:
    """Return aligned table lines (columns in `right` right-aligned), two spaces apart."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return [line(header)] + [line(r) for r in rows]


def jobs_table(jobs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the `cachectl jobs` table: ID STATE PREFIX SITES PROGRESS BYTES RATE ETA."""
    rows = []
    for j in jobs:
        p, state = j.get("progress") or {}, str(j.get("state", "?"))
        rows.append([str(j.get("id", "?")), state, str(j.get("prefix", "")),
                     ",".join(j.get("sites") or []), format_percent(percent(p, state)),
                     _bytes(p), job_rate(p, state), job_eta(p, state)])
    return format_table(["ID", "STATE", "PREFIX", "SITES", "PROGRESS", "BYTES", "RATE", "ETA"],
                        rows, right=(4, 5, 6, 7))


def sites_table(job: Mapping[str, Any]) -> list[str]:
    """Return a job's per-site progress table."""
    state, rows = str(job.get("state", "?")), []
    for site, p in sorted((job.get("sites_progress") or {}).items()):
        rows.append([site, format_percent(percent(p, state)),
                     _bytes(p),
                     f"{p.get('blocks_done') or 0}/{p.get('blocks_total') or 0}",
                     str(p.get("blocks_failed") or 0), str(p.get("origin_fills") or 0),
                     str(p.get("present") or 0), str(p.get("retries") or 0),
                     job_rate(p, state), job_eta(p, state)])
    return format_table(["SITE", "PROGRESS", "BYTES", "BLOCKS", "FAILED", "FILLS", "PRESENT",
                         "RETRIES", "RATE", "ETA"], rows, right=tuple(range(1, 10)))


def failed_lines(job: Mapping[str, Any]) -> list[str]:
    """Return the failed objects of a job, one line each with site, key, blocks, error, reason."""
    failed = job.get("failed_objects") or []
    if not failed:
        return []
    more = " (the coordinator lists at most 100)" if len(failed) >= 100 else ""
    lines = [f"failed objects ({len(failed)}){more}:"]
    for f in failed:
        lines.append(f"  {f.get('site', '?')}  {f.get('key', '?')}  {f.get('blocks', '?')} "
                     f"blocks  {f.get('error', '?')}: {f.get('reason', '')}".rstrip())
    return lines


def elapsed_s(job: Mapping[str, Any]) -> float | None:
    """Return how long a finished job ran (from its start, else its creation)."""
    start, end = job.get("started") or job.get("created"), job.get("finished")
    return None if start is None or end is None else max(0.0, end - start)


def summary_lines(job: Mapping[str, Any]) -> list[str]:
    """Return the end-of-wait summary: state, blocks, bytes, fills vs present, retries, failures."""
    p = job.get("progress") or {}
    lines = [f"job {job.get('id', '?')} {job.get('state', '?')}: {job.get('prefix', '')} on "
             f"{','.join(job.get('sites') or [])} in {format_duration(elapsed_s(job))}",
             f"  blocks   {p.get('blocks_done') or 0}/{p.get('blocks_total') or 0} done, "
             f"{p.get('blocks_failed') or 0} failed ({p.get('origin_fills') or 0} filled from "
             f"origin, {p.get('present') or 0} already present), {p.get('retries') or 0} retries",
             f"  bytes    {_bytes(p)} of {p.get('objects') or 0} objects"
             + (f", {rate}" if (rate := job_rate(p, str(job.get("state")))) != "-" else "")]
    if job.get("error"):
        lines.append(f"  error    {job['error']}")
    return lines + failed_lines(job)


def job_lines(job: Mapping[str, Any]) -> list[str]:
    """Return `cachectl job <id>`: fields, overall progress, per-site table, failed objects."""
    leader = f" (leader {job['leader']})" if job.get("leader") else ""
    lines = [f"id        {job.get('id', '?')}",
             f"state     {job.get('state', '?')}{leader}"
             + (", cancel requested" if job.get("cancel_requested") else ""),
             f"prefix    {job.get('prefix', '')} (model {job.get('model', '?')}, "
             f"version {job.get('version', '?')})",
             f"sites     {','.join(job.get('sites') or [])}"
             + ("  (verify)" if job.get("verify") else ""),
             f"created   {format_time(job.get('created'))}   started "
             f"{format_time(job.get('started'))}   finished {format_time(job.get('finished'))}",
             f"progress  {progress_line(job)}"]
    if job.get("error"):
        lines.append(f"error     {job['error']}")
    if job.get("sites_progress"):
        lines += [""] + sites_table(job)
    failed = failed_lines(job)
    return lines + ([""] + failed if failed else [])


def models_table(versions: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the `cachectl models` table: SITE MODEL VERSION STATE BYTES PINNED READY-AT."""
    rows = [[str(v.get("site", "?")), str(v.get("model", "?")), str(v.get("version", "?")),
             str(v.get("state", "?")), format_bytes(v.get("bytes") or 0),
             "yes" if v.get("pinned") else "no", format_time(v.get("ready_at"))]
            for v in versions]
    return format_table(["SITE", "MODEL", "VERSION", "STATE", "BYTES", "PINNED", "READY-AT"],
                        rows, right=(4,))


def plan_lines(plan: Mapping[str, Any]) -> list[str]:
    """Return `warmup --dry-run`: what the job would record, and its blocks per site."""
    rows = [[site, str(s.get("nodes", "?")), format_bytes(s.get("block_size")),
             str(s.get("blocks", "?")), format_bytes(s.get("bytes"))]
            for site, s in sorted((plan.get("sites") or {}).items())]
    return [f"dry run of {plan.get('prefix', '?')}: nothing was recorded",
            f"model     {plan.get('model', '?')}",
            f"version   {plan.get('version', '?')}",
            f"objects   {plan.get('objects', 0)} ({format_bytes(plan.get('bytes') or 0)})",
            ""] + format_table(["SITE", "NODES", "BLOCK-SIZE", "BLOCKS", "BYTES"], rows,
                               right=(1, 2, 3, 4))
