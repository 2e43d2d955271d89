"""What the coordinator keeps in etcd: warmup jobs, model versions per site, their JSON forms."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from coordinator.errors import BadPattern, BadPrefix, BadRequest, BadSite

DEFAULT_PATTERN = "{model}/{version}"
MAX_PATTERN = 200
JOB_STATES = ("pending", "running", "complete", "failed", "cancelled")
FINISHED = frozenset({"complete", "failed", "cancelled"})
VERSION_STATES = ("warming", "ready", "failed", "cancelled", "evicting", "evicted")
MAX_FAILED_OBJECTS = 20  # per job: job records stay small (all are read every pass)
MAX_REASON = 300
_SITE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def parse_prefix(url: str) -> tuple[str, str]:
    """Return (bucket, key prefix ending in '/') from 's3://bucket/path/'."""
    if not isinstance(url, str) or not url.startswith("s3://"):
        raise BadPrefix(f"{url!r} is not s3://<bucket>/<prefix>/")
    bucket, _, prefix = url[5:].partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,62}", bucket):
        raise BadPrefix(f"{url!r}: {bucket!r} is not an S3 bucket name")
    if not prefix.strip("/"):
        raise BadPrefix(f"{url!r} names a whole bucket; give a model version's prefix")
    if ".." in prefix.split("/") or "\0" in prefix or len(prefix.encode()) > 900:
        raise BadPrefix(f"{url!r}: the prefix holds '..', a NUL or is too long")
    return bucket, prefix.rstrip("/") + "/"


def check_site(site: object) -> str:
    """Return a valid site name or raise BadSite."""
    if not isinstance(site, str) or not _SITE.fullmatch(site):
        raise BadSite(f"{site!r} is not a site name (1-63 letters, digits, '.', '_', '-')")
    return site


def compile_pattern(pattern: str | None) -> re.Pattern[str]:
    """Return the regex of a model pattern such as '{model}/{version}' (the default if None).

    A pattern is a template, not a user regex (a regex from a request could backtrack for
    minutes): `{model}` stands for one or more path segments, `{version}` for one segment,
    `*` for any one segment, and the rest is literal text.
    """
    text = DEFAULT_PATTERN if pattern is None else pattern
    if not isinstance(text, str) or not 0 < len(text) <= MAX_PATTERN:
        raise BadPattern(f"pattern {pattern!r} must be a string of 1-{MAX_PATTERN} characters")
    if text.count("{model}") != 1 or text.count("{version}") != 1:
        raise BadPattern(f"pattern {text!r} needs {{model}} and {{version}} once each "
                         "(example: '{model}/{version}')")
    parts = re.split(r"(\{model\}|\{version\}|\*)", text)
    if any(c in p for p in parts[::2] for c in "{}"):
        raise BadPattern(f"pattern {text!r}: only {{model}}, {{version}} and * are placeholders")
    rx = {"{model}": "(?P<model>[^/]+(?:/[^/]+)*?)", "{version}": "(?P<version>[^/]+)",
          "*": "[^/]+"}
    return re.compile("".join(rx.get(p, re.escape(p)) for p in parts))


def model_of(bucket: str, prefix: str, pattern: str | None) -> tuple[str, str]:
    """Return (model, version) of a prefix by the pattern, or raise BadPattern."""
    text = f"{bucket}/{prefix}".rstrip("/")
    m = compile_pattern(pattern).fullmatch(text)
    if m is None:
        raise BadPattern(f"pattern {pattern or DEFAULT_PATTERN!r} does not split {text!r} "
                         "into a model and a version")
    return m.group("model"), m.group("version")


@dataclass
class Progress:
    """Counts of one warmup (one site, or the sum of all)."""

    objects: int = 0
    blocks_total: int = 0
    blocks_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    blocks_failed: int = 0
    origin_fills: int = 0
    present: int = 0
    retries: int = 0
    rate_bytes_per_s: float = 0.0  # running: over the last 10 s; ended: the average
    eta_s: float | None = None
    average_bytes_per_s: float = 0.0  # bytes done / seconds since the job started

    def add(self, other: Progress) -> None:
        """Add another site's counts to these (rate added, ETA the longest)."""
        for f in fields(self):
            if f.name != "eta_s":
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        if other.eta_s is not None:
            self.eta_s = max(self.eta_s or 0.0, other.eta_s)


@dataclass
class FailedObject:
    """An object some of whose blocks could not be warmed, and why."""

    site: str
    key: str
    blocks: int
    error: str
    reason: str


@dataclass
class Job:
    """A warmup of one prefix onto one or more sites."""

    id: str
    bucket: str
    key_prefix: str
    sites: list[str]
    model: str
    version: str
    verify: bool = False
    state: str = "pending"
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    cancel_requested: bool = False
    leader: str | None = None
    runs: int = 0  # how many leaders have started it (a resume is run 2+)
    tenant: str = ""  # the tenant that asked for it ('' = the admin)
    asked_bytes: int = 0  # bytes under the prefix when it was asked for (quota admission)
    progress: Progress = field(default_factory=Progress)
    sites_progress: dict[str, Progress] = field(default_factory=dict)
    failed_objects: list[FailedObject] = field(default_factory=list)

    @property
    def prefix(self) -> str:
        """Return the s3:// URL of the prefix."""
        return f"s3://{self.bucket}/{self.key_prefix}"

    @property
    def finished_state(self) -> bool:
        """Return whether the job has ended."""
        return self.state in FINISHED

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (API.md)."""
        d = asdict(self)
        d["prefix"] = self.prefix
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        """Return a job from its JSON form."""
        d = _known(cls, d)
        d["progress"] = Progress(**_known(Progress, d.get("progress", {})))
        d["sites_progress"] = {s: Progress(**_known(Progress, p))
                               for s, p in d.get("sites_progress", {}).items()}
        d["failed_objects"] = [FailedObject(**_known(FailedObject, f))
                               for f in d.get("failed_objects", [])]
        return cls(**d)


def _known(cls: type[Any], d: dict[str, Any]) -> dict[str, Any]:
    """Return the fields of `d` that `cls` has (a newer replica may have written more)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


def new_job_id() -> str:
    """Return a fresh, short job id."""
    return "w-" + secrets.token_hex(4)


def check_job_id(job_id: object) -> str:
    """Return a valid client-chosen job id or raise BadRequest."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise BadRequest(f"job id {job_id!r} must be 1-64 letters, digits, '.', '_', '-'")
    return job_id


def job_of(body: dict[str, Any], default_pattern: str) -> Job:
    """Return the job a POST /v1/jobs body asks for (fresh id unless it names one)."""
    bucket, prefix = parse_prefix(body.get("prefix"))  # type: ignore[arg-type]
    sites = body.get("sites")
    if isinstance(sites, str):
        sites = [s for s in sites.split(",") if s]
    if not isinstance(sites, list) or not sites:
        raise BadSite("name at least one site (\"sites\": [\"hz\"])")
    sites = list(dict.fromkeys(check_site(s) for s in sites))
    model, version = model_of(bucket, prefix, body.get("pattern") or default_pattern)
    verify = body.get("verify", False)
    if not isinstance(verify, bool):
        raise BadRequest("verify must be true or false")
    job_id = new_job_id() if body.get("id") is None else check_job_id(body["id"])
    return Job(job_id, bucket, prefix, sites, model, version, verify=verify)


def same_warmup(a: Job, b: Job) -> bool:
    """Return whether two jobs warm the same prefix, as the same model, onto the same sites."""
    return ((a.bucket, a.key_prefix, sorted(a.sites), a.model, a.version, a.verify)
            == (b.bucket, b.key_prefix, sorted(b.sites), b.model, b.version, b.verify))


@dataclass
class Version:
    """One version of one model at one site."""

    site: str
    model: str
    version: str
    bucket: str
    key_prefix: str
    state: str = "warming"
    bytes: int = 0
    objects: int = 0
    pinned: bool = False  # filled in from the pin keys when read
    ready_at: float | None = None
    updated: float = field(default_factory=time.time)
    job: str | None = None
    tenants: list[str] = field(default_factory=list)  # who warmed it (its quota holders)

    @property
    def prefix(self) -> str:
        """Return the s3:// URL of the version's prefix."""
        return f"s3://{self.bucket}/{self.key_prefix}"

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (API.md)."""
        d = asdict(self)
        d["prefix"] = self.prefix
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Version:
        """Return a version from its JSON form."""
        return cls(**_known(cls, d))
