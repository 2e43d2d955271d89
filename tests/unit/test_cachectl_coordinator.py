"""cachectl's coordinator commands without a server: formatting, argument parsing, waiting."""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from typing import Any

import pytest

from client import cli_coordinator
from client.cli import build_parser, main
from client.cli_coordinator import JobReporter, _sites, wait_for
from client.coordinator import CoordinatorClient, Job, coordinator_url
from client.errors import ClientError, CoordinatorError, CoordinatorUnavailable
from client.progress import (
    format_bytes,
    format_done_total,
    format_duration,
    format_percent,
    format_rate,
    format_table,
    job_lines,
    jobs_table,
    models_table,
    percent,
    progress_line,
    summary_lines,
)

GiB, MiB = 2**30, 2**20


def job(**kw: Any) -> Job:
    """Return the Job of coordinator/API.md's example, with fields replaced."""
    progress = {"objects": 12, "blocks_total": 650, "blocks_done": 300, "bytes_total": 2726297600,
                "bytes_done": 1258291200, "blocks_failed": 0, "origin_fills": 280, "present": 20,
                "retries": 0, "rate_bytes_per_s": 325000000.0, "eta_s": 4.5}
    j: Job = {"id": "w-3f9a1c2b", "prefix": "s3://b/m/v2/", "bucket": "b", "key_prefix": "m/v2/",
              "sites": ["hz"], "verify": False, "model": "b/m", "version": "v2",
              "state": "running", "created": 1764400000.0, "started": 1764400001.0,
              "finished": None, "error": None, "cancel_requested": False, "leader": "c-1",
              "progress": progress, "sites_progress": {"hz": dict(progress)},
              "failed_objects": []}
    j.update(kw)
    return j


# --- formatting


@pytest.mark.parametrize("n, text", [
    (0, "0 B"), (512, "512 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (310 * MiB, "310 MiB"), (int(1.2 * GiB), "1.2 GiB"), (99.94 * MiB, "99.9 MiB"),
    (3 * 2**40, "3.0 TiB"), (None, "-"),
])
def test_format_bytes(n: float | None, text: str) -> None:
    assert format_bytes(n) == text


def test_done_total_share_the_total_unit() -> None:
    assert format_done_total(1258291200, 2726297600) == "1.2/2.5 GiB"
    assert format_done_total(512 * 1024, 3 * GiB) == "0.0/3.0 GiB"
    assert format_done_total(0, 0) == "0/0 B"


def test_format_rate() -> None:
    assert format_rate(325000000.0) == "310 MiB/s"
    assert format_rate(0) == "0 B/s"
    assert format_rate(None) == "-"


@pytest.mark.parametrize("s, text", [
    (0, "0s"), (4.5, "5s"), (59.4, "59s"), (59.6, "1m00s"), (65, "1m05s"), (3599, "59m59s"),
    (3600, "1h00m"), (7380, "2h03m"), (None, "-"), (-1, "-"), (float("inf"), "-"),
])
def test_format_duration(s: float | None, text: str) -> None:
    assert format_duration(s) == text


def test_format_percent_rounds_down() -> None:
    assert [format_percent(x) for x in (0, 46.15, 99.9, 100)] == ["0%", "46%", "99%", "100%"]


def test_percent_by_bytes_then_blocks() -> None:
    assert percent({"bytes_done": 1, "bytes_total": 4}) == 25.0
    assert percent({"bytes_total": 0, "blocks_done": 1, "blocks_total": 2}) == 50.0
    assert percent({}) == 0.0
    assert percent({}, "complete") == 100.0
    assert percent({"bytes_done": 9, "bytes_total": 4}) == 100.0


def test_progress_line_of_a_running_job() -> None:
    assert progress_line(job(), bar_width=10) == (
        "[####......]  46% 1.2/2.5 GiB 310 MiB/s ETA 5s blocks 300/650 failed 0")
    assert progress_line(job(), bar_width=0) == (
        " 46% 1.2/2.5 GiB 310 MiB/s ETA 5s blocks 300/650 failed 0")


def test_progress_line_names_other_states_and_drops_rate() -> None:
    done = job(state="complete")
    done["progress"].update(bytes_done=2726297600, blocks_done=650)
    assert progress_line(done, bar_width=4) == (
        "[####] 100% 2.5/2.5 GiB - ETA - blocks 650/650 failed 0 (complete)")
    assert progress_line(job(cancel_requested=True), 0).endswith("(cancelling)")
    assert progress_line(job(state="pending", progress={}), 2) == (
        "[..]   0% 0/0 B - ETA - blocks 0/0 failed 0 (pending)")


def test_format_table_aligns_columns() -> None:
    assert format_table(["A", "NUM"], [["long", "1"], ["x", "200"]], right=(1,)) == [
        "A     NUM", "long    1", "x     200"]


def test_jobs_table() -> None:
    lines = jobs_table([job(), job(id="w-2", state="complete", sites=["hz", "fra"])])
    assert lines[0].split() == ["ID", "STATE", "PREFIX", "SITES", "PROGRESS", "BYTES", "RATE",
                                "ETA"]
    assert lines[1].split() == ["w-3f9a1c2b", "running", "s3://b/m/v2/", "hz", "46%",
                                "1.2/2.5", "GiB", "310", "MiB/s", "5s"]
    assert lines[2].split() == ["w-2", "complete", "s3://b/m/v2/", "hz,fra", "100%",
                                "1.2/2.5", "GiB", "-", "-"]
    assert len({len(line) for line in lines[:2]}) == 1  # aligned


def test_models_table() -> None:
    v = {"site": "hz", "model": "b/m", "version": "v2", "prefix": "s3://b/m/v2/",
         "state": "ready", "bytes": 2726297600, "objects": 12, "pinned": True,
         "ready_at": None, "updated": 1764400100.0, "job": "w-3f9a1c2b"}
    lines = models_table([v])
    assert lines[0].split() == ["SITE", "MODEL", "VERSION", "STATE", "BYTES", "PINNED",
                                "READY-AT"]
    assert lines[1].split() == ["hz", "b/m", "v2", "ready", "2.5", "GiB", "yes", "-"]


def test_job_details_show_sites_and_failed_objects() -> None:
    j = job(state="failed", error="3 blocks failed", sites=["hz", "fra"],
            failed_objects=[{"site": "fra", "key": "m/v2/x", "blocks": 3,
                             "error": "ObjectChanged", "reason": "overwritten at origin"}])
    j["sites_progress"]["fra"] = dict(j["progress"], blocks_failed=3)
    text = "\n".join(job_lines(j))
    assert "state     failed (leader c-1)" in text
    assert "model b/m, version v2" in text
    assert "error     3 blocks failed" in text
    site_rows = [line.split() for line in job_lines(j) if line.startswith(("fra ", "hz "))]
    assert [r[0] for r in site_rows] == ["fra", "hz"] and site_rows[0][5] == "3"
    assert "failed objects (1):" in text
    assert "  fra  m/v2/x  3 blocks  ObjectChanged: overwritten at origin" in text


def test_summary() -> None:
    j = job(state="complete", finished=1764400066.0, sites=["hz", "fra"])
    lines = summary_lines(j)
    assert lines[0] == "job w-3f9a1c2b complete: s3://b/m/v2/ on hz,fra in 1m05s"
    assert lines[1] == ("  blocks   300/650 done, 0 failed (280 filled from origin, 20 already "
                        "present), 0 retries")
    assert lines[2] == "  bytes    1.2/2.5 GiB of 12 objects"
    many = job(state="failed", failed_objects=[
        {"site": "hz", "key": f"k{i}", "blocks": 1, "error": "E", "reason": "r"}
        for i in range(100)])
    assert "failed objects (100) (the coordinator lists at most 100):" in summary_lines(many)


# --- arguments


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_warmup_arguments() -> None:
    a = parse("warmup", "s3://b/m/v2/", "--site", "hz", "--site", "fra,hz", "--verify",
              "--pattern", "(?P<model>.+)/(?P<version>[^/]+)", "--wait", "--json")
    assert a.coordinator_command and a.fn is cli_coordinator.cmd_warmup
    assert (a.url, _sites(a.sites), a.verify, a.wait, a.json) == (
        "s3://b/m/v2/", ["hz", "fra"], True, True, True)
    assert a.pattern == "(?P<model>.+)/(?P<version>[^/]+)"
    b = parse("warmup", "s3://b/m/v2/", "--site", "hz")
    assert (b.verify, b.pattern, b.wait, b.json) == (False, None, False, False)


def test_coordinator_flag_before_or_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CACHECTL_COORDINATOR", "env:1")
    assert parse("jobs").coordinator == "env:1"
    assert parse("--coordinator", "a:1", "jobs").coordinator == "a:1"
    assert parse("jobs", "--coordinator", "b:2").coordinator == "b:2"
    assert parse("--coordinator", "a:1", "jobs", "--coordinator", "b:2").coordinator == "b:2"


def test_job_show_or_cancel() -> None:
    a = parse("job", "w-1", "--json")
    assert (a.job_id, a.cancel, a.json) == ("w-1", False, True)
    b = parse("job", "cancel", "w-1")
    assert (b.job_id, b.cancel) == ("w-1", True)


@pytest.mark.parametrize("argv", [["job"], ["job", "cancel"], ["job", "w-1", "w-2"],
                                  ["job", "cancel", "w-1", "w-2"], ["jobs", "--limit", "0"],
                                  ["policy", "--site", "hz", "--keep", "-1"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        parse(*argv)
    assert e.value.code == 2 and "error:" in capsys.readouterr().err


def test_site_flags_of_the_version_commands() -> None:
    assert parse("models").site_name is None
    assert parse("models", "--site", "hz").site_name == "hz"
    assert parse("--site", "fra", "models").site_name is None  # the group's --site is not this
    for cmd in ("pin", "unpin", "evict"):
        a = parse(cmd, "s3://b/m/v1/", "--site", "hz")
        assert (a.command, a.url, a.site_name) == (cmd, "s3://b/m/v1/", "hz")
    assert parse("policy", "--site", "hz").keep is None
    assert parse("policy", "--site", "hz", "--keep", "3").keep == 3
    assert parse("jobs").limit == 50 and parse("jobs", "--limit", "5").limit == 5


def test_missing_coordinator_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("CACHECTL_COORDINATOR", raising=False)
    assert main(["jobs"]) == 1
    assert capsys.readouterr().err == (
        "cachectl: no coordinator: pass --coordinator URL or set CACHECTL_COORDINATOR\n")


def test_bad_prefix_and_empty_site(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["warmup", "b/m/v2/", "--site", "hz", "--coordinator", "127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == "cachectl: 'b/m/v2/' is not s3://<bucket>/<prefix>\n"
    assert main(["warmup", "s3://b/m/", "--site", ",", "--coordinator", "127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == "cachectl: give at least one --site (or set CACHECTL_SITE)\n"


def test_the_site_comes_from_cachectl_site_when_not_given(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The export lines of blockcache-stack set CACHECTL_SITE: warmup, pin, policy use it."""
    monkeypatch.delenv("CACHECTL_SITE", raising=False)
    coord = ["--coordinator", "127.0.0.1:9", "--retry-for", "0"]
    assert main(["warmup", "s3://b/m/v1/", *coord]) == 1
    assert capsys.readouterr().err == "cachectl: give at least one --site (or set CACHECTL_SITE)\n"
    assert main(["pin", "s3://b/m/v1/", *coord]) == 1
    assert capsys.readouterr().err == "cachectl: pin needs --site (or CACHECTL_SITE)\n"
    monkeypatch.setenv("CACHECTL_SITE", "hz")
    for argv in (["warmup", "s3://b/m/v1/"], ["pin", "s3://b/m/v1/"], ["policy"]):
        assert main([*argv, *coord]) == 1
        assert "cannot reach the coordinator" in capsys.readouterr().err  # past the site check


@pytest.mark.parametrize("url, base", [
    ("host:8081", "http://host:8081"), ("http://host:8081/", "http://host:8081"),
    ("https://c.example/api/", "https://c.example/api"), (" 10.0.0.1:8081 ", "http://10.0.0.1:8081"),
])
def test_coordinator_url(url: str, base: str) -> None:
    assert coordinator_url(url) == base
    assert CoordinatorClient(url).base_url == base


@pytest.mark.parametrize("url", ["", "ftp://host:1", "http://", "://x"])
def test_bad_coordinator_url(url: str) -> None:
    with pytest.raises(ClientError, match="bad coordinator URL"):
        coordinator_url(url)


def test_coordinator_error_message_is_the_reason() -> None:
    e = CoordinatorError(404, "JobNotFound", "no job w-1")
    assert (str(e), e.status, e.error) == ("no job w-1", 404, "JobNotFound")
    assert str(CoordinatorError(500, "Boom", "")) == "Boom (HTTP 500)"
    assert isinstance(e, ClientError) and isinstance(CoordinatorUnavailable("x"), ClientError)


# --- progress on stderr


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_reporter_redraws_one_line_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    err = Tty()
    rep = JobReporter(err)
    rep.show(job())
    rep.show(job(state="complete", progress={}))
    rep.note("a note")
    first = "\r" + progress_line(job())
    second = progress_line(job(state="complete", progress={}))
    assert err.getvalue() == first + "\r" + second.ljust(len(first) - 1) + "\na note\n"
    rep.end_line()  # nothing left to end
    assert err.getvalue().endswith("a note\n")


def test_reporter_fits_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "41")
    err = Tty()
    JobReporter(err).show(job())
    assert err.getvalue() == "\r" + progress_line(job())[:40]


def test_reporter_writes_plain_lines_on_state_change_and_every_few_seconds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr("client.cli_coordinator.time.monotonic", lambda: now[0])
    err = io.StringIO()
    rep = JobReporter(err)
    rep.show(job(state="pending"))
    rep.show(job())  # state changed: shown
    now[0] += 1
    rep.show(job())  # 1 s later: not shown
    now[0] += 5
    rep.show(job())  # 6 s later: shown
    lines = err.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in err.getvalue() and "[" not in err.getvalue()
    assert lines[0].startswith("w-3f9a1c2b pending ")
    assert lines[1] == "w-3f9a1c2b running  46% 1.2/2.5 GiB 310 MiB/s ETA 5s blocks 300/650 " \
                       "failed 0"


# --- waiting and retrying


class Script:
    """Answers from a list, one per call (the last one again): Job dicts, or errors to raise."""

    def __init__(self, *answers: Job | Exception) -> None:
        self.answers, self.calls = list(answers), 0
        self.requests: list[tuple[str, str, Any]] = []  # method, path, body

    def next(self) -> Job:
        self.calls += 1
        a = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(a, Exception):
            raise a
        return a

    async def __call__(self, job_id: str) -> Job:
        return self.next()

    async def once(self, method: str, path: str, key: str | None, params: Any,
                   body: Any) -> Job:
        self.requests.append((method, path, body))
        return self.next()


def client(script: Script, retry_s: float, notes: list[str] | None = None) -> CoordinatorClient:
    """Return a client whose requests are answered by `script` (no server)."""
    cc = CoordinatorClient("c:1", retry_s=retry_s,
                           note=notes.append if notes is not None else None)
    cc._once = script.once  # type: ignore[method-assign]
    return cc


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("client.coordinator.RETRY_FIRST_S", 0.001)


UNREACHABLE = CoordinatorUnavailable("cannot reach the coordinator at http://c:1: refused")
ETCD_DOWN = CoordinatorError(503, "StateUnavailable", "etcd at h:2379 is unreachable", 0.0)


def test_a_request_rides_out_a_lost_coordinator_and_etcd_down() -> None:
    script, notes = Script(UNREACHABLE, ETCD_DOWN, CoordinatorError(502, "HTTP 502", "proxy"),
                           job()), []
    got = asyncio.run(client(script, 10, notes).job("w-1"))
    assert got["id"] == "w-3f9a1c2b" and script.calls == 4
    assert notes == ["cannot reach the coordinator at http://c:1: refused; retrying for up to "
                     "10s", "the coordinator answers again"]


def test_a_request_gives_up_after_the_window_with_the_last_reason() -> None:
    script = Script(ETCD_DOWN)
    with pytest.raises(CoordinatorUnavailable) as e:
        asyncio.run(client(script, 0.05).job("w-1"))
    assert str(e.value) == ("gave up after retrying for 0.05s: the coordinator at http://c:1 "
                            "answered GET /v1/jobs/w-1 with 503 (StateUnavailable): etcd at "
                            "h:2379 is unreachable")
    assert 3 <= script.calls <= 60
    script = Script(UNREACHABLE)
    with pytest.raises(CoordinatorUnavailable, match=r"^gave up after retrying for 0.05s: "
                       "cannot reach the coordinator at http://c:1: refused$"):
        asyncio.run(client(script, 0.05).models())


@pytest.mark.parametrize("error", [CoordinatorError(404, "NotFound", "no job w-1"),
                                   CoordinatorError(409, "Conflict", "already ended"),
                                   CoordinatorError(500, "Internal", "a bug")])
def test_an_answer_that_would_not_change_is_not_retried(error: CoordinatorError) -> None:
    script = Script(error)
    with pytest.raises(CoordinatorError) as e:
        asyncio.run(client(script, 10).job("w-1"))
    assert e.value is error and script.calls == 1


def test_no_window_or_a_health_check_asks_once() -> None:
    script = Script(ETCD_DOWN)
    with pytest.raises(CoordinatorError, match="etcd at h:2379"):
        asyncio.run(client(script, 0).job("w-1"))
    assert script.calls == 1
    script = Script(ETCD_DOWN)
    with pytest.raises(CoordinatorError, match="etcd at h:2379"):
        asyncio.run(client(script, 10).health())
    assert script.calls == 1


def test_retry_after_is_waited_for_up_to_the_longest_pause(
        monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(CoordinatorError(503, "StateUnavailable", "etcd", 0.2), job())
    t0 = time.monotonic()
    asyncio.run(client(script, 10).job("w-1"))
    assert 0.2 <= time.monotonic() - t0 < 2
    monkeypatch.setattr("client.coordinator.RETRY_MAX_S", 0.05)
    script = Script(CoordinatorError(503, "StateUnavailable", "etcd", 3600.0), job())
    t0 = time.monotonic()
    asyncio.run(client(script, 10).job("w-1"))
    assert time.monotonic() - t0 < 1


def test_a_retried_warmup_sends_one_job_id_every_time() -> None:
    script = Script(ETCD_DOWN, UNREACHABLE, job())
    asyncio.run(client(script, 10).create_job("s3://b/m/v2/", ["hz"]))
    ids = {body["id"] for _, _, body in script.requests}
    assert len(script.requests) == 3 and len(ids) == 1 and ids.pop().startswith("w-")
    assert [r[:2] for r in script.requests] == [("POST", "/v1/jobs")] * 3


def test_wait_follows_a_job_to_its_end() -> None:
    fetch = Script(job(), job(), job(state="complete"))
    shown: list[str] = []
    got = asyncio.run(wait_for(fetch, "w-1", lambda j: shown.append(j["state"]), poll_s=0.001))
    assert got["state"] == "complete" and shown == ["running", "running", "complete"]


def test_wait_names_the_job_when_the_coordinator_stays_away() -> None:
    fetch = Script(job(), CoordinatorUnavailable("gave up after retrying for 60s: refused"))
    with pytest.raises(CoordinatorUnavailable, match=r"^gave up after retrying for 60s: refused; "
                       r"job w-1 may still be running: see `cachectl job w-1`$"):
        asyncio.run(wait_for(fetch, "w-1", lambda j: None, poll_s=0.001))


def test_wait_stops_at_once_on_a_client_error() -> None:
    fetch = Script(CoordinatorError(404, "JobNotFound", "no job w-1"))
    with pytest.raises(CoordinatorError, match="no job w-1"):
        asyncio.run(wait_for(fetch, "w-1", lambda j: None, poll_s=0.01))
    assert fetch.calls == 1


def test_rates_running_and_finished() -> None:
    """A running job shows its window rate and ETA; a finished one its average, no ETA."""
    from client.progress import job_eta, job_rate

    running = {"rate_bytes_per_s": 8 * 2**20, "eta_s": 65, "average_bytes_per_s": 7 * 2**20}
    assert job_rate(running, "running") == "8.0 MiB/s"
    assert job_eta(running, "running") == "1m05s"
    done = {"rate_bytes_per_s": 7 * 2**20, "eta_s": None, "average_bytes_per_s": 7 * 2**20}
    assert job_rate(done, "complete") == "7.0 MiB/s avg"
    assert job_eta(done, "complete") == "-"
    assert job_rate({}, "pending") == "-"
    j = job(state="complete", finished=1764400066.0, progress={**job()["progress"],
                                                                "average_bytes_per_s": 2**20})
    assert summary_lines(j)[2].endswith("of 12 objects, 1.0 MiB/s avg")
