"""cachectl's coordinator commands end to end against a fake coordinator (coordinator/API.md)."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.test_utils import TestServer

from client import cli_coordinator
from client.cli import main
from client.coordinator import CoordinatorClient
from client.errors import CoordinatorError, CoordinatorUnavailable

T0 = 1764400000.0
GiB = 2**30
SITES = {"hz", "fra"}
ROOT = Path(__file__).resolve().parents[2]
Json = dict[str, Any]


def progress(done: int, failed: int = 0, total: int = 650) -> Json:
    """Return a Job progress with `done` of `total` 4 MiB blocks."""
    return {"objects": 2, "blocks_total": total, "blocks_done": done,
            "bytes_total": total * 4 << 20, "bytes_done": done * 4 << 20,
            "blocks_failed": failed, "origin_fills": max(done - 20, 0), "present": min(done, 20),
            "retries": 1 if failed else 0, "rate_bytes_per_s": 300.0 * 2**20,
            "eta_s": (total - done) * 4 / 300}


RUNNING: Json = {"state": "running", "started": T0 + 1, "progress": progress(300)}
COMPLETE: Json = {"state": "complete", "finished": T0 + 66, "progress": progress(650)}
FAILED: Json = {"state": "failed", "finished": T0 + 30, "error": "1 object failed",
                "progress": progress(647, failed=3),
                "failed_objects": [{"site": "hz", "key": "m/v2/x.safetensors", "blocks": 3,
                                    "error": "ObjectChanged",
                                    "reason": "overwritten at origin during the warmup"}]}
CANCELLED: Json = {"state": "cancelled", "finished": T0 + 9, "cancel_requested": True}


class FakeCoordinator:
    """The coordinator API of API.md over dicts; jobs step through `plan` on every GET."""

    def __init__(self) -> None:
        self.url = ""  # host:port, once served
        self.jobs: dict[str, Json] = {}
        self.plan: list[Json | int] = [RUNNING, COMPLETE]  # GET answers (int: that error status)
        self._plans: dict[str, list[Json | int]] = {}
        self.requests: list[tuple[str, str, Any]] = []  # method, path with query, JSON body
        self.down = 0  # the next this many requests answer 503, as with etcd down
        self.lost = 0  # the next this many are carried out, but their answer is a 503
        self.policies = {"hz": 2, "fra": 1}
        self.versions = [self._version("hz", "v1", pinned=True), self._version("hz", "v2"),
                         self._version("fra", "v2", state="warming")]
        self.app = web.Application(middlewares=[self._record])
        self.app.add_routes([
            web.post("/v1/jobs", self.create), web.get("/v1/jobs", self.list_jobs),
            web.get("/v1/jobs/{id}", self.get_job), web.post("/v1/jobs/{id}/cancel", self.cancel),
            web.get("/v1/models", self.models), web.post("/v1/{op:pin|unpin|evict}", self.version),
            web.get("/v1/sites/{site}/policy", self.policy),
            web.put("/v1/sites/{site}/policy", self.policy)])

    @staticmethod
    def _version(site: str, version: str, pinned: bool = False, state: str = "ready") -> Json:
        return {"site": site, "model": "b/m", "version": version, "prefix": f"s3://b/m/{version}/",
                "state": state, "bytes": 5 * GiB // 2, "objects": 2, "pinned": pinned,
                "ready_at": T0 + 100 if state == "ready" else None, "updated": T0 + 100,
                "job": "w-0"}

    @web.middleware
    async def _record(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        body = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path_qs, body))
        if self.down:
            self.down -= 1
            return self.etcd_down()
        answer = await handler(request)
        if self.lost:
            self.lost -= 1
            return self.etcd_down()
        return answer

    @staticmethod
    def etcd_down() -> web.Response:
        return web.json_response({"error": "StateUnavailable", "reason": "etcd at 10.0.0.5:2379 "
                                  "is unreachable: connection refused"}, status=503,
                                 headers={"Retry-After": "0"})

    @staticmethod
    def error(status: int, error: str, reason: str) -> web.Response:
        return web.json_response({"error": error, "reason": reason}, status=status)

    async def create(self, request: web.Request) -> web.Response:
        b = await request.json()
        prefix, sites = b.get("prefix", ""), b.get("sites") or []
        if not re.fullmatch(r"s3://[a-z0-9.-]+/.*", prefix):
            return self.error(400, "BadRequest", f"prefix {prefix!r} is not s3://bucket/prefix/")
        if not sites or set(sites) - SITES:
            return self.error(400, "BadRequest", f"unknown site in {sites}: known are hz, fra")
        if prefix.endswith("/empty/"):
            return self.error(404, "NoObjects", f"no objects under {prefix}")
        job_id = b.get("id") or f"w-{len(self.jobs) + 1:08x}"
        if job_id in self.jobs:  # a resent request: the job it created (coordinator/API.md)
            same = (self.jobs[job_id]["prefix"], self.jobs[job_id]["sites"]) == (prefix, sites)
            return (web.json_response({"job": self.jobs[job_id]}) if same else
                    self.error(409, "Conflict", f"job id {job_id} already names a warmup"))
        bucket, _, key = prefix[5:].partition("/")
        self.jobs[job_id] = {
            "id": job_id, "prefix": prefix, "bucket": bucket, "key_prefix": key, "sites": sites,
            "verify": b.get("verify", False), "model": f"{bucket}/m", "version": "v2",
            "state": "pending", "created": T0, "started": None, "finished": None, "error": None,
            "cancel_requested": False, "leader": "coord-0", "progress": progress(0),
            "sites_progress": {s: progress(0) for s in sites}, "failed_objects": []}
        self._plans[job_id] = copy.deepcopy(self.plan)
        return web.json_response({"job": self.jobs[job_id]}, status=201)

    async def list_jobs(self, request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "50"))
        return web.json_response({"jobs": list(reversed(self.jobs.values()))[:limit]})

    async def get_job(self, request: web.Request) -> web.Response:
        job_id = request.match_info["id"]
        if job_id not in self.jobs:
            return self.error(404, "JobNotFound", f"no job {job_id}")
        plan = self._plans[job_id]
        step = plan.pop(0) if len(plan) > 1 else (plan[0] if plan else None)
        if isinstance(step, int):
            return self.error(step, "NotLeader", "the leader is failing over")
        job = self.jobs[job_id]
        if step is not None:
            job.update(copy.deepcopy(step))
            job["sites_progress"] = {s: job["progress"] for s in job["sites"]}
        return web.json_response({"job": job})

    async def cancel(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["id"])
        if job is None:
            return self.error(404, "JobNotFound", f"no job {request.match_info['id']}")
        if job["state"] in ("complete", "failed", "cancelled"):
            return self.error(409, "JobFinished", f"job {job['id']} already {job['state']}")
        job["cancel_requested"] = True
        self._plans[job["id"]] = [CANCELLED]
        return web.json_response({"job": job})

    async def models(self, request: web.Request) -> web.Response:
        site = request.query.get("site")
        return web.json_response({"versions": [v for v in self.versions
                                               if site is None or v["site"] == site]})

    async def version(self, request: web.Request) -> web.Response:
        b, op = await request.json(), request.match_info["op"]
        for v in self.versions:
            if (v["prefix"], v["site"]) == (b["prefix"], b["site"]):
                if op == "evict":
                    v["state"] = "evicting"
                else:
                    v["pinned"] = op == "pin"
                return web.json_response({"version": v}, status=202 if op == "evict" else 200)
        return self.error(404, "VersionNotFound", f"no version {b['prefix']} at {b['site']}")

    async def policy(self, request: web.Request) -> web.Response:
        site = request.match_info["site"]
        if site not in self.policies:
            return self.error(404, "SiteNotFound", f"no site {site}")
        if request.method == "PUT":
            keep = (await request.json()).get("keep")
            if not isinstance(keep, int) or keep < 1:
                return self.error(400, "BadRequest", "keep must be a whole number, at least 1")
            self.policies[site] = keep
        return web.json_response({"site": site, "keep": self.policies[site]})


@pytest_asyncio.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeCoordinator]:
    monkeypatch.setattr(cli_coordinator, "POLL_S", 0.01)
    monkeypatch.setattr(cli_coordinator, "GIVE_UP_S", 2.0)
    monkeypatch.setattr("client.coordinator.RETRY_FIRST_S", 0.01)
    monkeypatch.delenv("CACHECTL_COORDINATOR", raising=False)
    ids = itertools.count(1)
    monkeypatch.setattr("client.coordinator.new_job_id", lambda: f"w-{next(ids):08x}")
    f = FakeCoordinator()
    async with TestServer(f.app, host="127.0.0.1") as server:
        f.url = f"127.0.0.1:{server.port}"
        yield f


Run = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def cachectl(fake: FakeCoordinator, capsys: pytest.CaptureFixture[str]) -> Run:
    """Return a function running `cachectl --coordinator <fake> ARGS` -> (exit, stdout, stderr)."""
    async def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await asyncio.to_thread(main, ["--coordinator", fake.url, *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


def job_posts(fake: FakeCoordinator) -> list[Any]:
    return [body for m, path, body in fake.requests if (m, path) == ("POST", "/v1/jobs")]


@pytest.mark.asyncio
async def test_warmup_wait_complete(fake: FakeCoordinator, cachectl: Run) -> None:
    code, out, err = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz", "--site", "fra,hz",
                                    "--verify", "--pattern", "(?P<model>.+)/(?P<version>v\\d+)",
                                    "--wait")
    assert code == 0, err
    assert job_posts(fake) == [{"id": "w-00000001", "prefix": "s3://b/m/v2/",
                                "sites": ["hz", "fra"], "verify": True,
                                "pattern": "(?P<model>.+)/(?P<version>v\\d+)"}]
    lines = out.splitlines()
    assert lines[0] == "w-00000001"
    assert lines[1] == "job w-00000001 complete: s3://b/m/v2/ on hz,fra in 1m05s"
    assert "650/650 done, 0 failed (630 filled from origin, 20 already present), 0 retries" \
        in lines[2]
    assert "failed objects" not in out
    # not a TTY: plain progress lines, one per state
    assert err.splitlines() == [
        "w-00000001 running  46% 1.2/2.5 GiB 300 MiB/s ETA 5s blocks 300/650 failed 0",
        "w-00000001 complete 100% 2.5/2.5 GiB - ETA - blocks 650/650 failed 0 (complete)"]
    polls = [p for m, p, _ in fake.requests if (m, p) == ("GET", "/v1/jobs/w-00000001")]
    assert len(polls) == 2


@pytest.mark.asyncio
async def test_warmup_wait_failed_lists_failed_objects(fake: FakeCoordinator,
                                                       cachectl: Run) -> None:
    fake.plan = [RUNNING, FAILED]
    code, out, err = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz", "--wait")
    assert code == 1, err
    assert "job w-00000001 failed: s3://b/m/v2/ on hz in 29s" in out
    assert "647/650 done, 3 failed" in out and "1 retries" in out
    assert "  error    1 object failed" in out
    assert ("failed objects (1):\n  hz  m/v2/x.safetensors  3 blocks  ObjectChanged: "
            "overwritten at origin during the warmup\n") in out


@pytest.mark.asyncio
async def test_warmup_wait_cancelled_exits_2(fake: FakeCoordinator, cachectl: Run) -> None:
    fake.plan = [{"state": "pending"}, RUNNING, CANCELLED]
    code, out, _ = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz", "--wait")
    assert code == 2
    assert "job w-00000001 cancelled:" in out


@pytest.mark.asyncio
async def test_warmup_wait_rides_out_a_failover(fake: FakeCoordinator, cachectl: Run) -> None:
    fake.plan = [RUNNING, 503, 503, 502, RUNNING, COMPLETE]
    code, out, err = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz", "--wait")
    assert code == 0, err
    assert "cachectl: the leader is failing over; retrying for up to 2s" in err
    assert "cachectl: the coordinator answers again" in err


@pytest.mark.asyncio
async def test_warmup_wait_json_prints_the_final_job(fake: FakeCoordinator,
                                                     cachectl: Run) -> None:
    code, out, _ = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz", "--wait", "--json")
    assert code == 0
    assert json.loads(out)["job"]["state"] == "complete" and out.count("\n") == 1


@pytest.mark.asyncio
async def test_warmup_without_wait(fake: FakeCoordinator, cachectl: Run) -> None:
    assert await cachectl("warmup", "s3://b/m/v2/", "--site", "hz") == (0, "w-00000001\n", "")
    code, out, _ = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz", "--json")
    assert code == 0 and json.loads(out)["job"]["id"] == "w-00000002"
    assert job_posts(fake)[0] == {"id": "w-00000001", "prefix": "s3://b/m/v2/", "sites": ["hz"],
                                  "verify": False, "pattern": None}
    assert all(m == "POST" for m, _, _ in fake.requests)  # nothing polled


@pytest.mark.asyncio
async def test_warmup_with_a_job_id_run_twice_starts_one_job(fake: FakeCoordinator,
                                                             cachectl: Run) -> None:
    argv = ["warmup", "s3://b/m/v2/", "--site", "hz", "--job-id", "rollout-7"]
    assert await cachectl(*argv) == (0, "rollout-7\n", "")
    assert await cachectl(*argv) == (0, "rollout-7\n", "")
    assert list(fake.jobs) == ["rollout-7"]
    assert [b["id"] for b in job_posts(fake)] == ["rollout-7", "rollout-7"]
    assert await cachectl("warmup", "s3://b/m/v3/", "--site", "hz", "--job-id", "rollout-7") == (
        1, "", "cachectl: job id rollout-7 already names a warmup\n")


@pytest.mark.asyncio
@pytest.mark.parametrize("argv, reason", [
    (["warmup", "s3://b/empty/", "--site", "hz"], "no objects under s3://b/empty/"),
    (["warmup", "s3://b/m/v2/", "--site", "mars"], "unknown site in ['mars']: known are hz, fra"),
    (["job", "w-404"], "no job w-404"),
    (["job", "cancel", "w-404"], "no job w-404"),
    (["pin", "s3://b/m/v9/", "--site", "hz"], "no version s3://b/m/v9/ at hz"),
    (["policy", "--site", "hz", "--keep", "0"], "keep must be a whole number, at least 1"),
    (["policy", "--site", "mars"], "no site mars"),
])
async def test_coordinator_errors_are_one_line(cachectl: Run, argv: list[str],
                                               reason: str) -> None:
    assert await cachectl(*argv) == (1, "", f"cachectl: {reason}\n")


@pytest.mark.asyncio
async def test_job_cancel(fake: FakeCoordinator, cachectl: Run) -> None:
    await cachectl("warmup", "s3://b/m/v2/", "--site", "hz")
    code, out, err = await cachectl("job", "cancel", "w-00000001")
    assert (code, out, err) == (0, "job w-00000001: pending, cancel requested\n", "")
    assert ("POST", "/v1/jobs/w-00000001/cancel", None) in fake.requests
    code, out, _ = await cachectl("job", "w-00000001", "--json")  # the job finishes cancelled
    assert json.loads(out)["job"]["state"] == "cancelled"
    assert await cachectl("job", "cancel", "w-00000001") == (
        1, "", "cachectl: job w-00000001 already cancelled\n")


@pytest.mark.asyncio
async def test_job_details(fake: FakeCoordinator, cachectl: Run) -> None:
    fake.plan = [FAILED]
    await cachectl("warmup", "s3://b/m/v2/", "--site", "hz,fra")
    code, out, _ = await cachectl("job", "w-00000001")
    assert code == 0
    assert "state     failed (leader coord-0)" in out
    assert re.search(r"^SITE +PROGRESS +BYTES +BLOCKS +FAILED", out, re.M)
    assert re.search(r"^fra +99% +2\.5/2\.5 GiB +647/650 +3 ", out, re.M)
    assert "  hz  m/v2/x.safetensors  3 blocks  ObjectChanged:" in out


@pytest.mark.asyncio
async def test_jobs_table_and_limit(fake: FakeCoordinator, cachectl: Run) -> None:
    assert await cachectl("jobs") == (0, "no jobs\n", "")
    for _ in range(3):
        await cachectl("warmup", "s3://b/m/v2/", "--site", "hz")
    code, out, _ = await cachectl("jobs", "--limit", "2")
    lines = out.splitlines()
    assert code == 0 and len(lines) == 3
    assert lines[0].split()[:4] == ["ID", "STATE", "PREFIX", "SITES"]
    assert [line.split()[0] for line in lines[1:]] == ["w-00000003", "w-00000002"]
    assert ("GET", "/v1/jobs?limit=2", None) in fake.requests
    code, out, _ = await cachectl("jobs", "--json")
    assert [j["id"] for j in json.loads(out)["jobs"]] == ["w-00000003", "w-00000002",
                                                          "w-00000001"]


@pytest.mark.asyncio
async def test_models_pin_unpin_evict(fake: FakeCoordinator, cachectl: Run) -> None:
    code, out, _ = await cachectl("models")
    assert code == 0 and len(out.splitlines()) == 4
    code, out, _ = await cachectl("models", "--site", "hz")
    rows = [line.split() for line in out.splitlines()]
    assert rows[0] == ["SITE", "MODEL", "VERSION", "STATE", "BYTES", "PINNED", "READY-AT"]
    assert [r[:7] for r in rows[1:]] == [["hz", "b/m", "v1", "ready", "2.5", "GiB", "yes"],
                                         ["hz", "b/m", "v2", "ready", "2.5", "GiB", "no"]]
    assert ("GET", "/v1/models?site=hz", None) in fake.requests
    assert await cachectl("pin", "s3://b/m/v2/", "--site", "hz") == (
        0, "pinned s3://b/m/v2/ at hz: ready, 2.5 GiB\n", "")
    assert ("POST", "/v1/pin", {"prefix": "s3://b/m/v2/", "site": "hz"}) in fake.requests
    code, out, _ = await cachectl("unpin", "s3://b/m/v1/", "--site", "hz", "--json")
    assert json.loads(out)["version"]["pinned"] is False
    code, out, _ = await cachectl("evict", "s3://b/m/v2/", "--site", "fra")
    assert (code, out) == (0, "evicting s3://b/m/v2/ at fra: evicting, 2.5 GiB (in the "
                              "background: see `cachectl models --site fra`)\n")


@pytest.mark.asyncio
async def test_policy_show_and_set(fake: FakeCoordinator, cachectl: Run) -> None:
    assert await cachectl("policy", "--site", "hz") == (
        0, "site hz keeps the 2 newest ready versions of each model, and every pinned one\n", "")
    code, out, _ = await cachectl("policy", "--site", "hz", "--keep", "3", "--json")
    assert (code, json.loads(out)) == (0, {"site": "hz", "keep": 3})
    assert ("PUT", "/v1/sites/hz/policy", {"keep": 3}) in fake.requests


@pytest.mark.asyncio
async def test_coordinator_from_the_environment(fake: FakeCoordinator,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("CACHECTL_COORDINATOR", f"http://{fake.url}/")
    assert await asyncio.to_thread(main, ["jobs"]) == 0
    assert capsys.readouterr().out == "no jobs\n"


@pytest.mark.asyncio
async def test_unreachable_coordinator(capsys: pytest.CaptureFixture[str]) -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    argv = ["jobs", "--coordinator", f"127.0.0.1:{port}"]
    assert await asyncio.to_thread(main, [*argv, "--retry-for", "0"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cachectl: cannot reach the coordinator at http://127.0.0.1:{port}: ")
    assert err.count("\n") == 1
    t0 = time.monotonic()
    assert await asyncio.to_thread(main, [*argv, "--retry-for", "0.5"]) == 1
    assert 0.5 <= time.monotonic() - t0 < 5
    first, last = capsys.readouterr().err.splitlines()
    assert first.startswith(f"cachectl: cannot reach the coordinator at http://127.0.0.1:{port}: ")
    assert first.endswith("; retrying for up to 0.5s")
    assert last.startswith("cachectl: gave up after retrying for 0.5s: cannot reach the "
                           f"coordinator at http://127.0.0.1:{port}: ")


@pytest.mark.asyncio
@pytest.mark.parametrize("argv", [["jobs"], ["job", "w-00000001"], ["models"],
                                  ["job", "cancel", "w-00000001"],
                                  ["pin", "s3://b/m/v2/", "--site", "hz"],
                                  ["unpin", "s3://b/m/v2/", "--site", "hz"],
                                  ["evict", "s3://b/m/v2/", "--site", "hz"],
                                  ["policy", "--site", "hz"],
                                  ["policy", "--site", "hz", "--keep", "3"]])
async def test_every_command_rides_out_etcd_down(fake: FakeCoordinator, cachectl: Run,
                                                argv: list[str]) -> None:
    await cachectl("warmup", "s3://b/m/v2/", "--site", "hz")
    fake.down = 3
    code, _, err = await cachectl(*argv)
    assert code == 0, err
    assert err == ("cachectl: etcd at 10.0.0.5:2379 is unreachable: connection refused; "
                   "retrying for up to 2s\ncachectl: the coordinator answers again\n")
    assert fake.down == 0


@pytest.mark.asyncio
async def test_a_warmup_whose_answer_was_lost_starts_one_job(fake: FakeCoordinator,
                                                             cachectl: Run) -> None:
    fake.down, fake.lost = 1, 1  # refused once, then created but the answer lost
    code, out, err = await cachectl("warmup", "s3://b/m/v2/", "--site", "hz")
    assert (code, out) == (0, "w-00000001\n"), err
    assert list(fake.jobs) == ["w-00000001"] and len(job_posts(fake)) == 3


@pytest.mark.asyncio
async def test_a_command_gives_up_after_retry_for_with_the_reason(fake: FakeCoordinator,
                                                                  cachectl: Run) -> None:
    fake.down = 10**6
    code, out, err = await cachectl("jobs", "--retry-for", "0.3")
    assert (code, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"cachectl: gave up after retrying for 0.3s: the coordinator at http://{fake.url} "
        "answered GET /v1/jobs with 503 (StateUnavailable): etcd at 10.0.0.5:2379 is "
        "unreachable: connection refused")


@pytest.mark.asyncio
async def test_client_errors_and_odd_answers() -> None:
    async def proxy_error(request: web.Request) -> web.Response:
        return web.Response(status=502, text="<html>\n<b>Bad Gateway</b>\n</html>")

    async def no_answer(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.get("/v1/jobs", proxy_error), web.get("/healthz", no_answer)])
    async with TestServer(app, host="127.0.0.1") as server:
        url = f"127.0.0.1:{server.port}"
        async with CoordinatorClient(url, timeout_s=0.2, retry_s=0) as cc:
            with pytest.raises(CoordinatorError) as e:
                await cc.jobs()
            assert e.value.status == 502 and "\n" not in str(e.value)
            assert str(e.value).endswith("with 502: <html> <b>Bad Gateway</b> </html>")
        async with CoordinatorClient(url, timeout_s=0.2, retry_s=0.2) as cc:
            with pytest.raises(CoordinatorUnavailable) as gave_up:
                await cc.jobs()
            assert str(gave_up.value) == (f"gave up after retrying for 0.2s: the coordinator at "
                                          f"http://{url} answered GET /v1/jobs with 502: <html> "
                                          "<b>Bad Gateway</b> </html>")
            with pytest.raises(CoordinatorUnavailable, match="did not answer GET /healthz "
                               "within 0.2s"):
                await cc.health()


@pytest.mark.asyncio
async def test_ctrl_c_stops_waiting_and_says_how_to_cancel(fake: FakeCoordinator) -> None:
    fake.plan = [RUNNING]  # runs forever
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "client.cli", "--coordinator", fake.url,
        "warmup", "s3://b/m/v2/", "--site", "hz", "--wait", "--job-id", "w-00000001", cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    try:
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"w-00000001\n"
        for _ in range(200):  # until it has polled once
            if any(p == "/v1/jobs/w-00000001" for _, p, _ in fake.requests):
                break
            await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err
    assert (b"cachectl: stopped waiting; job w-00000001 keeps running (see `cachectl job "
            b"w-00000001`; stop it with `cachectl job cancel w-00000001`)\n") in err
    assert b"Traceback" not in err
    assert fake.jobs["w-00000001"]["cancel_requested"] is False
