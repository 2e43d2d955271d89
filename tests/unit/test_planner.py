"""The coordinator's pure parts: prefixes and patterns, block plans by owner, eviction policy."""

from __future__ import annotations

import pytest

from cachenode.blocks import ObjectMeta
from cachenode.config import ConfigError
from cachenode.ring import Ring
from coordinator.config import CoordinatorConfig
from coordinator.errors import BadPattern, BadPrefix, BadRequest, BadSite, UnknownVersion
from coordinator.model import (
    Job,
    Progress,
    Version,
    check_site,
    job_of,
    model_of,
    parse_prefix,
    same_warmup,
)
from coordinator.planner import (
    BlockTask,
    block_tasks,
    by_owner,
    evictions,
    moved,
    overlapping,
    versions_under,
    warm_request,
)

BS = 4 * 2**20


def test_prefixes_are_normalised_and_bad_ones_say_why() -> None:
    assert parse_prefix("s3://models/qwen3-8b/v2/") == ("models", "qwen3-8b/v2/")
    assert parse_prefix("s3://models/qwen3-8b/v2") == ("models", "qwen3-8b/v2/")
    for bad in ("models/qwen/v2/", "s3://", "s3://models", "s3://models/", "s3://Bad_B/x/",
                "s3://models/a/../b/", 7):
        with pytest.raises(BadPrefix):
            parse_prefix(bad)  # type: ignore[arg-type]
    with pytest.raises(BadSite):
        check_site("hz/../x")
    assert check_site("hz-1") == "hz-1"


def test_the_last_segment_is_the_version_unless_a_pattern_says_otherwise() -> None:
    assert model_of("models", "org/qwen3-8b/v2/", None) == ("models/org/qwen3-8b", "v2")
    assert model_of("m", "qwen/v7/weights/", "{model}/{version}/weights") == ("m/qwen", "v7")
    assert model_of("m", "team/qwen/v7/", "*/{model}/{version}") == ("team/qwen", "v7")
    assert model_of("m", "q.w+n/v(1)/", None) == ("m/q.w+n", "v(1)")  # literal, not regex
    with pytest.raises(BadPattern, match="once each"):
        model_of("m", "a/b/", "{model}/(.+)")
    with pytest.raises(BadPattern, match="only {model}"):
        model_of("m", "a/b/", "{model}/{version}/{x}")
    with pytest.raises(BadPattern, match="1-200 characters"):
        model_of("m", "a/b/", "")
    with pytest.raises(BadPattern, match="does not split"):
        model_of("m", "a/b/", "{model}/{version}/weights")
    # a template cannot backtrack for long, whatever the prefix
    with pytest.raises(BadPattern, match="does not split"):
        model_of("m", "/".join(["a"] * 400) + "/", "{model}/*/*/{version}/x")


def test_config_requires_etcd_and_a_good_pattern() -> None:
    with pytest.raises(ConfigError, match="--etcd"):
        CoordinatorConfig.from_args([], env={})
    with pytest.raises(ConfigError, match="--model-pattern"):
        CoordinatorConfig.from_args(["--etcd", "http://127.0.0.1:2379", "--model-pattern",
                                     "{model}"], env={})
    c = CoordinatorConfig.from_args(["--etcd", "http://127.0.0.1:2379"],
                                    env={"CACHECOORD_KEEP": "3"})
    assert c.keep_versions == 3 and c.etcd_hostports == [("127.0.0.1", 2379)]


def test_job_json_round_trips() -> None:
    j = Job("w-1", "b", "m/v1/", ["hz"], "b/m", "v1", progress=Progress(blocks_total=3),
            sites_progress={"hz": Progress(blocks_done=1)})
    d = j.to_dict()
    assert d["prefix"] == "s3://b/m/v1/"
    assert Job.from_dict(d) == j


def _objs() -> list[ObjectMeta]:
    return [ObjectMeta("b", "m/a", 2 * BS + 5, '"e1"'), ObjectMeta("b", "m/empty", 0, '"e0"'),
            ObjectMeta("b", "m/c", BS, '"e2"')]


def test_every_block_becomes_one_task_of_the_right_length() -> None:
    tasks = block_tasks(_objs(), BS)
    assert [(t.obj.key, t.index, t.length) for t in tasks] == [
        ("m/a", 0, BS), ("m/a", 1, BS), ("m/a", 2, 5), ("m/c", 0, BS)]


def test_blocks_go_to_their_ring_owner_in_bounded_batches() -> None:
    objs = [ObjectMeta("b", f"m/{i}", 10 * BS, f'"{i}"') for i in range(20)]
    tasks = block_tasks(objs, BS)
    ring = Ring({"n0": 100, "n1": 100, "n2": 100})
    plan = by_owner(tasks, ring, 16)
    assert set(plan) == {"n0", "n1", "n2"}
    seen = 0
    for node, batches in plan.items():
        for batch in batches:
            assert 1 <= len(batch) <= 16
            assert all(ring.owner(t.bid) == node for t in batch)
            seen += len(batch)
    assert seen == len(tasks) == 200


def test_only_blocks_confirmed_on_a_node_that_left_are_warmed_again() -> None:
    tasks = block_tasks([ObjectMeta("b", f"m/{i}", 8 * BS, f'"{i}"') for i in range(10)], BS)
    before = Ring({"n0": 100, "n1": 100, "n2": 100})
    for t in tasks:
        t.done_on = before.owner(t.bid)
    tasks[0].done_on = None  # not done yet: not "moved", just still to do
    after = Ring({"n0": 100, "n2": 100})
    lost = moved(tasks, after)
    assert lost and all(t.done_on == "n1" for t in lost)
    assert {id(t) for t in lost} == {id(t) for t in tasks if t.done_on == "n1"}


def test_a_warm_request_groups_a_batch_by_object() -> None:
    a, c = _objs()[0], _objs()[2]
    body = warm_request([BlockTask(a, 0, BS, "x"), BlockTask(a, 2, 5, "y"),
                         BlockTask(c, 0, BS, "z")], BS, True)
    assert body["block_size"] == BS and body["verify"] is True
    assert [(o["key"], o["indices"]) for o in body["objects"]] == [  # type: ignore[attr-defined]
        ("m/a", [0, 2]), ("m/c", [0])]


def _v(version: str, state: str = "ready", at: float = 0.0, pinned: bool = False,
       model: str = "b/m") -> Version:
    return Version("hz", model, version, "b", f"m/{version}/", state=state, ready_at=at,
                   updated=at, pinned=pinned)


def _names(actions: list) -> list[str]:  # type: ignore[type-arg]
    return [f"{a.model}:{a.version}" for a in actions]


def test_the_newest_k_ready_versions_and_pinned_ones_stay() -> None:
    assert _names(evictions([_v("v1", at=1), _v("v2", at=2), _v("v3", at=3)], 2)) == ["b/m:v1"]
    assert evictions([_v("v1", at=1, pinned=True), _v("v2", at=2), _v("v3", at=3)], 2) == []
    # a pinned version counts among the newest K: keep=1 with v3 pinned keeps only v3
    assert _names(evictions([_v("v1", at=1), _v("v2", at=2), _v("v3", at=3, pinned=True)],
                            1)) == ["b/m:v1", "b/m:v2"]
    # a warming version never leaves; other models are counted on their own
    vs = [_v("v1", at=1), _v("v2", at=2), _v("v3", "warming", at=3),
          _v("x1", at=1, model="b/other")]
    assert evictions(vs, 1) == [e for e in evictions(vs, 1) if e.version == "v1"]
    assert _names(evictions(vs, 1)) == ["b/m:v1"]


def test_failed_versions_leave_once_a_newer_one_is_ready_and_evicting_ones_resume() -> None:
    assert evictions([_v("v1", "failed", at=5)], 2) == []
    assert _names(evictions([_v("v1", "failed", at=1), _v("v2", at=2)], 2)) == ["b/m:v1"]
    assert _names(evictions([_v("v1", at=1), _v("v2", "evicting", at=2)], 2)) == ["b/m:v2"]
    assert evictions([_v("v1", "evicted", at=1), _v("v2", at=2)], 1) == []
    assert evictions([_v("v1", "evicting", at=1, pinned=True)], 1) == []  # a pin stops it


def test_evicting_a_prefix_would_take_every_version_under_it() -> None:
    vs = [_v("v1"), _v("v2", "evicted"), Version("hz", "b/x", "v1", "b", "x/v1/")]
    assert [v.version for v in overlapping("b", "m/", vs)] == ["v1"]  # evicted ones don't count
    assert overlapping("b", "m/v1/", vs) == []  # itself
    assert [v.key_prefix for v in overlapping("b", "m/v1/sub/", vs)] == ["m/v1/"]
    assert overlapping("other", "m/", vs) == []


def test_the_versions_under_a_prefix_are_the_ones_it_holds_itself_included() -> None:
    vs = [_v("v2"), _v("v1", "evicted"), Version("hz", "b/x", "v1", "b", "x/v1/"),
          Version("hz", "o/m", "v1", "o", "m/v1/")]
    assert [v.key_prefix for v in versions_under("b", "m/", vs)] == ["m/v1/", "m/v2/"]
    assert [v.key_prefix for v in versions_under("b", "m/v1/", vs)] == ["m/v1/"]
    assert versions_under("b", "m/v1/sub/", vs) == []  # a version holding it is not under it


def test_an_unknown_version_names_the_versions_under_it_bounded() -> None:
    none = UnknownVersion("hz", "s3://b/m/v9/", [])
    assert none.status == 404 and none.details() == {"versions": [], "versions_total": 0}
    assert str(none) == ("site hz has no version at s3://b/m/v9/, and none under it: warm it "
                         "first (`cachectl models --site hz` lists the versions the site has)")
    two = UnknownVersion("hz", "s3://b/m/", [("s3://b/m/v1/", "ready"),
                                             ("s3://b/m/v2/", "evicted")])
    assert str(two) == ("site hz has no version at s3://b/m/; name one of its versions under "
                        "it: s3://b/m/v1/ (ready), s3://b/m/v2/ (evicted)")
    many = UnknownVersion("hz", "s3://b/m/", [(f"s3://b/m/v{i:02}/", "ready")
                                              for i in range(57)])
    assert "(the first 20 of 57): s3://b/m/v00/ (ready), " in str(many)
    assert str(many).endswith("s3://b/m/v19/ (ready)")
    assert many.details()["versions_total"] == 57 and len(many.details()["versions"]) == 20


def test_a_job_request_is_parsed_whole_before_anything_is_read() -> None:
    body = {"prefix": "s3://bk/m/v2", "sites": "hz,fra,hz", "verify": True, "id": "rollout-42"}
    j = job_of(body, "{model}/{version}")
    assert (j.id, j.bucket, j.key_prefix, j.sites, j.model, j.version, j.verify) == (
        "rollout-42", "bk", "m/v2/", ["hz", "fra"], "bk/m", "v2", True)
    fresh = job_of({"prefix": "s3://bk/m/v2/", "sites": ["hz"]}, "{model}/{version}")
    assert fresh.id.startswith("w-") and fresh.id != job_of(
        {"prefix": "s3://bk/m/v2/", "sites": ["hz"]}, "{model}/{version}").id
    for bad, error in (({"id": ""}, BadRequest), ({"id": "a/b"}, BadRequest),
                       ({"id": "x" * 65}, BadRequest), ({"id": 7}, BadRequest),
                       ({"sites": []}, BadSite), ({"verify": "no"}, BadRequest),
                       ({"prefix": "bk/m/"}, BadPrefix), ({"pattern": "{model}"}, BadPattern)):
        with pytest.raises(error):
            job_of({**body, **bad}, "{model}/{version}")


def test_the_same_warmup_is_the_same_prefix_model_sites_and_verify() -> None:
    a = job_of({"prefix": "s3://bk/m/v2/", "sites": ["hz", "fra"], "id": "j"}, "{model}/{version}")
    same = job_of({"prefix": "s3://bk/m/v2", "sites": "fra,hz", "id": "j"}, "{model}/{version}")
    assert same_warmup(a, same)
    for other in ({"sites": ["hz"]}, {"prefix": "s3://bk/m/v3/"}, {"verify": True},
                  {"pattern": "bk/{model}/{version}"}):
        body = {"prefix": "s3://bk/m/v2/", "sites": ["hz", "fra"], "id": "j", **other}
        assert not same_warmup(a, job_of(body, "{model}/{version}")), other


def test_a_tenants_warm_request_names_the_tenant() -> None:
    from cachenode.blocks import ObjectMeta
    from coordinator.planner import block_tasks, warm_request

    tasks = block_tasks([ObjectMeta("b", "m/v1/x", 10, '"e"')], 4)
    assert "tenant" not in warm_request(tasks, 4, False)  # an admin's job: nobody's blocks
    assert warm_request(tasks, 4, False, "team-a")["tenant"] == "team-a"
