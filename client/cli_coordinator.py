"""cachectl commands that drive the coordinator: warmup, jobs, job, models, pin, policy (thin)."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

from cachenode.settings import format_duration, parse_duration
from client import cli_tenants, cli_versions
from client.cli_versions import check_prefix, dump
from client.coordinator import CoordinatorClient, Job
from client.errors import ClientError, CoordinatorUnavailable
from client.progress import (
    job_lines,
    jobs_table,
    plan_lines,
    progress_line,
    summary_lines,
)

SITE_ENV = "CACHECTL_SITE"  # the site of commands that take one, when --site is not given
NO_COORDINATOR = "no coordinator: pass --coordinator URL or set CACHECTL_COORDINATOR"
POLL_S = 1.0  # --wait: one GET of the job this often
GIVE_UP_S = 60.0  # --retry-for: how long a request failing for a passing reason is retried
PLAIN_EVERY_S = 5.0  # --wait without a TTY: one progress line this often
FINISHED = {"complete": 0, "failed": 1, "cancelled": 2}  # final state -> exit code


def _sites(values: list[str]) -> list[str]:
    """Return the sites of repeated and comma-separated --site values, in order, once each."""
    return list(dict.fromkeys(s.strip() for v in values for s in v.split(",") if s.strip()))


class JobReporter:
    """Show a job's progress on `err`: a bar redrawn with \\r on a TTY, else a line every ~5 s."""

    def __init__(self, err: IO[str]) -> None:
        self.err = err
        self.tty = bool(getattr(err, "isatty", lambda: False)())
        self._width = 0  # characters of the bar line now on screen (TTY only)
        self._shown = -float("inf")
        self._state: object = None

    def show(self, job: Job) -> None:
        """Redraw the bar, or write a plain line if the state changed or enough time passed."""
        if self.tty:
            line = progress_line(job)[:max(20, shutil.get_terminal_size().columns - 1)]
            self.err.write("\r" + line.ljust(self._width))
            self._width = len(line)
        else:
            now, state = time.monotonic(), job.get("state")
            if state == self._state and now - self._shown < PLAIN_EVERY_S:
                return
            self._shown, self._state = now, state
            self.err.write(f"{job.get('id', '?')} {state} {progress_line(job, bar_width=0)}\n")
        self.err.flush()

    def note(self, message: str) -> None:
        """Write a message on a line of its own."""
        self.end_line()
        self.err.write(message + "\n")
        self.err.flush()

    def end_line(self) -> None:
        """End the bar line, so what follows starts on a fresh line."""
        if self.tty and self._width:
            self.err.write("\n")
            self._width = 0


async def wait_for(fetch: Callable[[str], Awaitable[Job]], job_id: str,
                   show: Callable[[Job], None], *, poll_s: float) -> Job:
    """Poll a job with `fetch` until it finishes (`fetch` rides out a lost coordinator)."""
    while True:
        try:
            job = await fetch(job_id)
        except CoordinatorUnavailable as e:
            raise CoordinatorUnavailable(f"{e}; job {job_id} may still be running: see "
                                         f"`cachectl job {job_id}`") from None
        show(job)
        if job.get("state") in FINISHED:
            return job
        await asyncio.sleep(poll_s)


async def cmd_warmup(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Start a warmup job; with --wait follow it to the end and exit by its final state."""
    if args.dry_run:
        plan = await cc.plan(check_prefix(args.url), args.sites, args.pattern)
        if args.json:
            dump(out, "dry_run", plan)
        else:
            out.write("\n".join(plan_lines(plan)) + "\n")
        return 0
    job = await cc.create_job(check_prefix(args.url), args.sites, args.verify, args.pattern,
                              args.job_id)
    job_id = str(job.get("id") or "")
    if not job_id:
        raise ClientError(f"the coordinator at {cc.base_url} answered without a job id")
    if args.json and not args.wait:
        dump(out, "job", job)
    elif not args.json:
        out.write(job_id + "\n")
        out.flush()
    if not args.wait:
        return 0
    rep = JobReporter(sys.stderr)
    cc.note = lambda message: rep.note(f"cachectl: {message}")  # off the progress bar's line
    try:
        job = await wait_for(cc.job, job_id, rep.show, poll_s=POLL_S)
    except asyncio.CancelledError:  # Ctrl-C: stop waiting, the job goes on
        rep.note(f"cachectl: stopped waiting; job {job_id} keeps running (see `cachectl job "
                 f"{job_id}`; stop it with `cachectl job cancel {job_id}`)")
        raise
    finally:
        rep.end_line()
    if args.json:
        dump(out, "job", job)
    else:
        out.write("\n".join(summary_lines(job)) + "\n")
    return FINISHED.get(str(job.get("state")), 1)


async def cmd_jobs(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """List jobs, newest first."""
    jobs = await cc.jobs(args.limit)
    if args.json:
        dump(out, "jobs", jobs)
    else:
        out.write("\n".join(jobs_table(jobs)) + "\n" if jobs else "no jobs\n")
    return 0


async def cmd_job(cc: CoordinatorClient, args: argparse.Namespace, out: IO[str]) -> int:
    """Show one job in detail, or (`job cancel <id>`) ask the coordinator to cancel it."""
    job = await (cc.cancel(args.job_id) if args.cancel else cc.job(args.job_id))
    if args.json:
        dump(out, "job", job)
    elif args.cancel:
        out.write(f"job {job.get('id', args.job_id)}: {job.get('state', '?')}"
                  + (", cancel requested\n" if job.get("cancel_requested") else "\n"))
    else:
        out.write("\n".join(job_lines(job)) + "\n")
    return 0


class _JobWords(argparse.Action):
    """Parse `job <id>` or `job cancel <id>` into job_id and cancel."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        words = list(values)
        if len(words) == 1 and words[0] != "cancel":
            namespace.job_id, namespace.cancel = words[0], False
        elif len(words) == 2 and words[0] == "cancel":
            namespace.job_id, namespace.cancel = words[1], True
        else:
            parser.error("give a job id, or `cancel <id>`")


def _non_negative(s: str) -> int:
    n = int(s)
    if n < 0:
        raise argparse.ArgumentTypeError(f"{s} is negative")
    return n


def _seconds(s: str) -> float:
    try:
        n = parse_duration(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s} is not a duration (60s, 2m, 0)") from None
    if not 0 <= n < float("inf"):
        raise argparse.ArgumentTypeError(f"{s} is not 0 or more seconds")
    return n


def _positive(s: str) -> int:
    n = int(s)
    if n < 1:
        raise argparse.ArgumentTypeError(f"{s} is not at least 1")
    return n


def _common_options() -> argparse.ArgumentParser:
    """Return the parser of the options every coordinator command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--coordinator", default=argparse.SUPPRESS, metavar="URL",
                        help="coordinator URL, host:port or http://host:port "
                        "[env CACHECTL_COORDINATOR]")
    common.add_argument("--token", default=argparse.SUPPRESS, metavar="TOKEN",
                        help="bearer token: the admin's or a tenant's [env CACHECTL_TOKEN]")
    common.add_argument("--json", action="store_true", help="print the coordinator's JSON answer")
    common.add_argument("--retry-for", type=_seconds, default=GIVE_UP_S, metavar="DURATION",
                        help="retry a coordinator that cannot answer now (unreachable, "
                        "502/503/504: etcd down, a failover) this long; 0: never "
                        f"[default {format_duration(GIVE_UP_S)}]")
    common.set_defaults(coordinator_command=True)
    return common


def add_commands(sub: Any) -> None:
    """Add the coordinator commands to cachectl's subparsers."""
    common = _common_options()

    def add(name: str, fn: Any, help: str, **kw: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help,
                                                    description=help, **kw)
        p.set_defaults(fn=fn)
        return p

    w = add("warmup", cmd_warmup, "warm every object under a prefix into the cache groups of "
            "sites (a coordinator job); prints the job id")
    w.add_argument("url", help="s3://bucket/prefix/ of one model version")
    w.add_argument("--site", dest="sites", action="append", metavar="SITE",
                   help="site to warm (repeat, or comma-separate: --site hz,fra) "
                   f"[env {SITE_ENV}]")
    w.add_argument("--verify", action="store_true",
                   help="re-read every block already on its owner and check its crc32")
    w.add_argument("--pattern", metavar="TEMPLATE", help="how bucket/prefix names a model "
                   "and a version: {model} is one or more path segments, {version} one, * any "
                   "one (default {model}/{version}: the last path segment is the version)")
    w.add_argument("--job-id", metavar="ID", help="the job's id (1-64 letters, digits, '.', "
                   "'_', '-'; default a fresh one): the same command with the same id starts no "
                   "second job, it shows the first")
    w.add_argument("--wait", action="store_true", help="follow the job (progress on stderr), "
                   "print a summary; exit 0 complete, 1 failed, 2 cancelled")
    w.add_argument("--dry-run", action="store_true", help="print the model, version, "
                   "objects, blocks and bytes per site the job would record; change nothing")
    j = add("jobs", cmd_jobs, "list warmup jobs, newest first")
    j.add_argument("--limit", type=_positive, default=50, help="at most this many [default 50]")
    one = add("job", cmd_job, "show a job (per-site progress, failed objects), or cancel it",
              usage="cachectl job [-h] [--coordinator URL] [--json] [cancel] <id>")
    one.add_argument("words", nargs="+", action=_JobWords, metavar="[cancel] <id>",
                     help="a job id to show, or `cancel` and the id of a job to cancel")
    m = add("models", cli_versions.cmd_models, "list model versions per site: state, size, pinned; "
            "`models forget s3://... --site S` deletes one version's record (blocks stay)",
            usage="cachectl models [-h] [--site SITE] [--json] [forget s3://bucket/prefix/]")
    m.add_argument("--site", dest="site_name", metavar="SITE", help="only this site")
    m.add_argument("words", nargs="*", metavar="forget URL",
                   help="`forget s3://bucket/model/version/` with --site: delete that "
                   "version's record (it must not be warming, evicting or pinned)")
    for name, help in (("pin", "keep a model version at a site whatever the policy"),
                       ("unpin", "let the site's policy evict a model version again"),
                       ("evict", "remove a model version from every node of a site now")):
        v = add(name, cli_versions.cmd_version, help)
        v.add_argument("url", help="s3://bucket/model/version/")
        v.add_argument("--site", dest="site_name", metavar="SITE", help=f"[env {SITE_ENV}]")
    pol = add("policy", cli_versions.cmd_policy, "show a site's keep count, or set it with --keep")
    pol.add_argument("--site", dest="site_name", metavar="SITE", help=f"[env {SITE_ENV}]")
    pol.add_argument("--keep", type=_non_negative, metavar="K",
                     help="keep the K newest ready versions of each model (pinned ones stay too)")
    cli_tenants.add_commands(add)


def _note(message: str) -> None:
    sys.stderr.write(f"cachectl: {message}\n")
    sys.stderr.flush()


async def run(args: argparse.Namespace, out: IO[str]) -> int:
    """Run one coordinator command; return its exit code."""
    if not args.coordinator:
        raise ClientError(NO_COORDINATOR)
    if hasattr(args, "sites"):
        args.sites = _sites(args.sites or [os.environ.get(SITE_ENV, "")])
        if not args.sites:
            raise ClientError(f"give at least one --site (or set {SITE_ENV})")
    if args.command in ("pin", "unpin", "evict", "policy") and not args.site_name:
        args.site_name = os.environ.get(SITE_ENV, "")
        if not args.site_name:
            raise ClientError(f"{args.command} needs --site (or {SITE_ENV})")
    cli_tenants.check(args)
    async with CoordinatorClient(args.coordinator, retry_s=args.retry_for,
                                 note=_note, token=args.token) as cc:
        code: int = await args.fn(cc, args, out)
        return code
