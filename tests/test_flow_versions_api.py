"""Flow versions through the admin API over real HTTP, on real servers and a real Redis:
publish, the versions, rollback, their refusals, the audit log, and what calls route by."""

from __future__ import annotations

import asyncio
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from ivr.admin.api import MAX_FLOWS_BODY_BYTES
from ivr.flow_versions import FlowChecks, LiveFlows
from ivr.redis.client import connect
from ivr.redis.flow_store import FlowStore
from ivr.redis.queue_store import QueueStore
from tests import loyalty_api as L
from tests.twilio_client import FakeTwilio, call_params

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}", "X-IVR-Actor": "alice"}
GOLD_SIP = "<Sip>sip:gold@queues.example.com</Sip>"
PLATINUM_SIP = "<Sip>sip:platinum@queues.example.com</Sip>"
LOYALTY = "loyalty_routing.yaml"


class Admin(httpx.Client):
    server_url: str
    twilio: FakeTwilio


@pytest.fixture
def admin(make_settings, start_server):
    server = start_server(make_settings(admin_token=ADMIN))
    with Admin(base_url=server.url + "/admin/api", headers=AUTH, timeout=30) as client:
        client.server_url = server.url
        client.twilio = FakeTwilio(server.url)
        yield client


def draft(config_dir: Path) -> dict[str, str]:
    """The flows of the test's checkout, as a publish sends them."""
    return {path.name: path.read_text() for path in sorted((config_dir / "flows").glob("*.yaml"))}


def gold_to(files: dict[str, str], queue: str) -> dict[str, str]:
    """The files with the loyalty flow's gold callers routed to `queue`."""
    text = files[LOYALTY].replace("    queue: gold\n", f"    queue: {queue}\n")
    assert text != files[LOYALTY] or queue == "gold"
    return {**files, LOYALTY: text}


def gather_path(response: httpx.Response) -> str:
    """Where Twilio posts the answer to the question in `response`."""
    gather = ET.fromstring(response.content).find("Gather")
    assert gather is not None, response.text
    parts = urlsplit(gather.get("action", ""))
    return parts.path + (f"?{parts.query}" if parts.query else "")


def readyz_version(url: str) -> int:
    return httpx.get(url + "/readyz", timeout=10).json()["flow_version"]


def test_the_live_version_is_answered_with_its_flows_files_and_etag(admin: Admin,
                                                                    config_dir: Path) -> None:
    response = admin.get("/flows")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["version"], body["who"], body["action"], body["live"]) == (1, "seed", "seed",
                                                                             True)
    assert response.headers["etag"] == '"v1"'
    assert body["served"] == 1
    assert body["files"] == draft(config_dir)
    loyalty = next(flow for flow in body["flows"] if flow["name"] == "loyalty_routing")
    assert loyalty["queues"] == ["gold", "platinum", "standard"]
    assert loyalty["default"] is True and loyalty["channels"] == ["voice", "messaging"]


def test_a_publish_is_a_new_version_this_server_routes_by_when_it_answers(
    admin: Admin, config_dir: Path
) -> None:
    assert GOLD_SIP in admin.twilio.call(L.GOLD).text
    response = admin.post("/flows/versions", json={
        "files": gold_to(draft(config_dir), "platinum"), "message": "gold to platinum"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["version"], body["created"], body["live"]) == (2, True, True)
    assert (body["who"], body["message"], body["action"]) == ("alice (admin token)",
                                                              "gold to platinum", "publish")
    assert response.headers["location"] == "/admin/api/flows/versions/2"
    assert response.headers["etag"] == '"v2"'
    # Switched before it answered, not when the announcement comes back from Redis.
    assert body["served"] == 2
    assert PLATINUM_SIP in admin.twilio.call(L.GOLD).text
    assert readyz_version(admin.server_url) == 2


def test_publishing_what_is_live_writes_nothing_and_answers_200(admin: Admin,
                                                                config_dir: Path) -> None:
    response = admin.post("/flows/versions", json={"files": draft(config_dir)})
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["created"]) == (1, False)
    assert [v["version"] for v in admin.get("/flows/versions").json()["versions"]] == [1]
    assert admin.get("/audit").json()["entries"] == []


def test_a_refused_publish_names_every_problem_by_file_and_field_and_changes_nothing(
    admin: Admin, config_dir: Path
) -> None:
    files = gold_to(draft(config_dir), "gld")
    files["broken.yaml"] = "trigger: [unclosed\n"
    files["notes.txt"] = "not a flow"
    response = admin.post("/flows/versions", json={"files": files})
    assert response.status_code == 422, response.text
    assert response.json()["errors"] == [
        {"file": "notes.txt", "field": "",
         "message": "not a flow file's name: a name ending in .yaml or .yml, without a "
                    "directory, not starting with `.`"}]
    del files["notes.txt"]
    response = admin.post("/flows/versions", json={"files": files})
    assert response.status_code == 422, response.text
    assert response.json()["error"] == ("the flows were refused (2 problems); nothing was "
                                        "published")
    errors = response.json()["errors"]
    assert [(e["file"], e["field"]) for e in errors] == [("broken.yaml", ""),
                                                         (LOYALTY, "steps.to_gold.queue")]
    assert errors[0]["message"].startswith("line ")
    assert "did you mean 'gold'?" in errors[1]["message"]
    assert admin.get("/flows").json()["version"] == 1
    assert GOLD_SIP in admin.twilio.call(L.GOLD).text


@pytest.mark.parametrize(("body", "field"), [
    ({}, "files"), ({"files": {}}, "files"), ({"files": {LOYALTY: 3}}, "files"),
    ({"files": {LOYALTY: "x"}, "message": 7}, "message"),
    ({"files": {LOYALTY: "x"}, "message": "m" * 501}, "message"),
    ({"files": {LOYALTY: "x"}, "mesage": "typo"}, "mesage"), ([], ""),
], ids=["no-files", "empty", "not-text", "message-not-text", "message-long", "unknown-field",
        "not-an-object"])
def test_a_publish_body_of_the_wrong_shape_gets_422_naming_the_field(admin: Admin, body,
                                                                     field) -> None:
    response = admin.post("/flows/versions", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == field
    assert admin.get("/flows").json()["version"] == 1


def test_a_body_over_the_bound_gets_413_and_malformed_json_400(admin: Admin) -> None:
    huge = '{"files": {"a.yaml": "' + "x" * MAX_FLOWS_BODY_BYTES + '"}}'
    response = admin.post("/flows/versions", content=huge)
    assert response.status_code == 413
    assert "over 8,388,608 bytes" in response.json()["error"]

    def chunks():  # no Content-Length: the bound holds on what is sent, too
        for _ in range(MAX_FLOWS_BODY_BYTES // 65536 + 2):
            yield b"x" * 65536

    assert admin.post("/flows/versions", content=chunks()).status_code == 413
    assert admin.post("/flows/versions", content="{not json").status_code == 400


def test_a_flow_file_as_large_as_a_file_may_be_is_published(admin: Admin,
                                                             config_dir: Path) -> None:
    files = draft(config_dir)
    # A real flow is kilobytes; one of 1 MiB less a little (comments) still fits the body.
    files[LOYALTY] += "#" + "x" * (1024 * 1024 - len(files[LOYALTY].encode()) - 2) + "\n"
    response = admin.post("/flows/versions", json={"files": files})
    assert response.status_code == 201, response.text


def test_if_match_with_a_stale_live_version_gets_412_and_changes_nothing(
    admin: Admin, config_dir: Path
) -> None:
    files = draft(config_dir)
    first = admin.post("/flows/versions", json={"files": gold_to(files, "platinum")},
                       headers={"If-Match": '"v1"'})
    assert first.status_code == 201
    stale = admin.post("/flows/versions", json={"files": gold_to(files, "standard")},
                       headers={"If-Match": '"v1"'})
    assert stale.status_code == 412
    assert stale.json() == {"error": "If-Match is stale: the live flows version is now 2",
                            "current_version": 2}
    assert admin.post("/flows/rollback", json={"version": 1},
                      headers={"If-Match": '"v1"'}).status_code == 412
    assert admin.get("/flows").json()["version"] == 2


def test_versions_are_listed_newest_first_with_the_live_one_marked_and_each_has_its_files(
    admin: Admin, config_dir: Path
) -> None:
    files = draft(config_dir)
    admin.post("/flows/versions", json={"files": gold_to(files, "platinum"), "message": "two"})
    listed = admin.get("/flows/versions").json()
    assert listed["live"] == 2
    assert [(v["version"], v["live"], v["message"]) for v in listed["versions"]] == [
        (2, True, "two"), (1, False, f"seeded from {config_dir / 'flows'}")]
    one = admin.get("/flows/versions/1")
    assert one.status_code == 200
    assert (one.json()["files"], one.json()["live"]) == (files, False)
    assert "etag" not in one.headers  # only the live version's tag is a precondition
    for missing in ("3", "0", "abc"):
        response = admin.get(f"/flows/versions/{missing}")
        assert response.status_code == 404
        assert response.json()["error"].startswith(f"there is no flows version {missing}")


def test_a_rollback_makes_an_old_versions_files_a_new_live_version(admin: Admin,
                                                                   config_dir: Path) -> None:
    files = draft(config_dir)
    admin.post("/flows/versions", json={"files": gold_to(files, "platinum")})
    assert PLATINUM_SIP in admin.twilio.call(L.GOLD).text
    response = admin.post("/flows/rollback", json={"version": 1})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["version"], body["action"], body["rolled_back_to"], body["served"]) == (
        3, "rollback", 1, 3)
    assert body["message"] == "rollback to version 1"
    assert admin.get("/flows/versions/3").json()["files"] == files
    assert GOLD_SIP in admin.twilio.call(L.GOLD).text
    again = admin.post("/flows/rollback", json={"version": 1})
    assert (again.status_code, again.json()["version"], again.json()["created"]) == (200, 3,
                                                                                     False)


@pytest.mark.parametrize(("body", "status"), [
    ({"version": 9}, 404), ({"version": 0}, 422), ({"version": "1"}, 422), ({}, 422),
    ({"version": True}, 422)])
def test_a_rollback_to_no_version_is_refused(admin: Admin, body, status) -> None:
    response = admin.post("/flows/rollback", json=body)
    assert response.status_code == status, response.text
    if status == 404:
        assert response.json()["error"].startswith("there is no flows version 9")
    assert admin.get("/flows").json()["version"] == 1


def test_a_rollback_to_a_version_that_no_longer_fits_the_queues_gets_422(
    admin: Admin, config_dir: Path
) -> None:
    files = draft(config_dir)
    assert admin.put("/queues/elite", json={"sip_uri": "sip:elite@x.example.com"}
                     ).status_code == 201
    admin.post("/flows/versions", json={"files": gold_to(files, "elite")})
    admin.post("/flows/rollback", json={"version": 1})
    assert admin.delete("/queues/elite").status_code == 204
    response = admin.post("/flows/rollback", json={"version": 2})
    assert response.status_code == 422, response.text
    [problem] = response.json()["errors"]
    assert (problem["file"], problem["field"]) == (LOYALTY, "steps.to_gold.queue")
    assert "'elite'" in problem["message"]
    assert admin.get("/flows").json()["version"] == 3


def test_publishes_and_rollbacks_are_in_the_audit_log(admin: Admin, config_dir: Path) -> None:
    files = draft(config_dir)
    published = admin.post("/flows/versions", json={"files": gold_to(files, "platinum"),
                                                    "message": "why"}).json()
    admin.post("/flows/rollback", json={"version": 1})
    entries = admin.get("/audit").json()["entries"]
    assert [(e["action"], e["flows_version"], e["who"], e["message"]) for e in entries] == [
        ("flows_rollback", 3, "alice (admin token)", "rollback to version 1"),
        ("flows_publish", 2, "alice (admin token)", "why")]
    assert entries[1]["hash"] == published["hash"] and entries[0]["rolled_back_to"] == 1


def test_two_instances_on_one_redis_switch_together_after_one_publish(
    admin: Admin, config_dir: Path, make_settings, start_server
) -> None:
    other = start_server(make_settings(admin_token=ADMIN)).url
    other_twilio = FakeTwilio(other)
    assert GOLD_SIP in other_twilio.call(L.GOLD).text
    admin.post("/flows/versions", json={"files": gold_to(draft(config_dir), "platinum")})
    deadline = time.monotonic() + 1.0  # the issue: every instance within a second
    while readyz_version(other) != 2:
        assert time.monotonic() < deadline, "the other instance never switched"
        time.sleep(0.01)
    assert readyz_version(admin.server_url) == 2
    assert PLATINUM_SIP in other_twilio.call(L.GOLD).text
    assert PLATINUM_SIP in admin.twilio.call(L.GOLD).text


def test_a_call_waiting_at_a_question_finishes_on_its_version_when_a_publish_renames_the_step(
    admin: Admin, config_dir: Path
) -> None:
    team_choice = "team_choice.yaml"
    files = draft(config_dir)
    asked = call_params(L.UNKNOWN, To="+15005550102")
    first = admin.twilio.post("/twilio/voice", asked)
    assert "<Gather" in first.text
    # The question renamed, and its keys swapped: 1 for support, 2 for sales.
    renamed = (files[team_choice].replace("menu", "choose").replace('["1", "sales"', "@")
               .replace('["2", "support"', '["1", "support"').replace("@", '["2", "sales"'))
    assert renamed.count('["1", "support"') == 1 and renamed.count('["2", "sales"') == 1
    assert admin.post("/flows/versions", json={"files": {**files, team_choice: renamed}}
                      ).json()["served"] == 2
    # The answer to the question asked on version 1 is read by version 1: 1 is sales there.
    answer = admin.twilio.post(gather_path(first), {**asked, "Digits": "1"})
    assert answer.status_code == 200
    assert "sip:sales@queues.example.com" in answer.text, answer.text
    # A new call takes version 2: 1 is support now.
    again = call_params(L.UNKNOWN, To="+15005550102")
    answered = admin.twilio.post(gather_path(admin.twilio.post("/twilio/voice", again)),
                                 {**again, "Digits": "1"})
    assert "sip:support@queues.example.com" in answered.text, answered.text


def test_an_older_version_announced_after_a_newer_one_was_switched_to_is_left_alone(
    redis_url: str, config_dir: Path
) -> None:
    """A publish this process made is served at once; the announcement of a publish made just
    before it, by another instance, may come in after it and must not take the process back."""

    async def switches() -> list[int]:
        store = QueueStore(connect(redis_url))
        try:
            checks = FlowChecks(secrets=())
            flow_store = FlowStore(store.redis)
            files = draft(config_dir)
            for queue in ("gold", "platinum", "standard"):  # the queues of the flows published
                await flow_store.publish(gold_to(files, queue), "test", queue)
            live = LiveFlows(flow_store, checks, checks.load(files, None, 1))
            served = []
            await live.caught_up(3)
            served.append(live.current.version)
            await live.changed("2")
            served.append(live.current.version)
            await live.changed("4")  # not in the store: it keeps serving what it has
            served.append(live.current.version)
            return served
        finally:
            await store.close()

    assert asyncio.run(switches()) == [3, 3, 3]


def test_the_live_flows_are_shown_with_why_when_this_instance_cannot_load_them(
    admin: Admin, config_dir: Path, redis_url: str
) -> None:
    from tests.test_flow_versions import (  # a version needing a secret unset here
        CRM_FLOW,
        run,
    )

    files = {**draft(config_dir), "crm.yaml": CRM_FLOW}
    run(redis_url, lambda flows, queues: flows.publish(files, "dan", "from elsewhere"))
    body = admin.get("/flows").json()
    assert (body["version"], body["served"], body["flows"], body["files"]) == (2, 1, None, files)
    assert "secrets.crm_token is not set" in body["problem"]


def test_a_rollback_with_a_misspelt_field_is_refused_naming_it(admin: Admin) -> None:
    response = admin.post("/flows/rollback", json={"version": 1, "verison": 1})
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "verison"
