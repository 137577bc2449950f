"""The admin API over real HTTP: auth, every route, every failure, and the race for one ETag."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time

import httpx
import pytest

from starlette.routing import Route

from ivr.admin import api as admin_api
from ivr.admin import pages as admin_pages
from ivr.passwords import hash_password
from ivr.queues import check_queue_name
from tests import loyalty_api as L
from tests.twilio_client import FakeTwilio

ADMIN = "admin-token-for-tests-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def api(make_settings, start_server) -> httpx.Client:
    server = start_server(make_settings(admin_token=ADMIN))
    with httpx.Client(base_url=server.url + "/admin/api", headers=AUTH, timeout=30) as client:
        client.server_url = server.url  # type: ignore[attr-defined]
        yield client


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN},
     {"Authorization": f"Basic {ADMIN}"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong", "no-scheme", "basic", "empty"],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/queues"), ("GET", "/queues/gold"), ("PUT", "/queues/gold"),
     ("PATCH", "/queues/gold"), ("DELETE", "/queues/gold"), ("GET", "/queues/gold/history"),
     ("POST", "/queues/gold/rollback"), ("GET", "/audit"), ("GET", "/calls"),
     ("POST", "/cache/purge"), ("GET", "/flows"), ("GET", "/flows/versions"),
     ("POST", "/flows/versions"), ("GET", "/flows/versions/1"), ("POST", "/flows/rollback")],
)
def test_every_route_needs_the_admin_token(api: httpx.Client, headers, method, path) -> None:
    response = httpx.request(method, str(api.base_url).rstrip("/") + path,
                             headers=headers, json={"sip_uri": "sip:x@y.com"})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.get("/queues/gold").json()["sip_uri"] == "sip:gold@queues.example.com"


def test_without_a_configured_token_the_admin_api_is_disabled(make_settings, start_server) -> None:
    server = start_server(make_settings())
    response = httpx.get(server.url + "/admin/api/queues", headers=AUTH)
    assert response.status_code == 404
    assert "IVR_ADMIN_TOKEN" in response.json()["error"]


def test_in_a_local_trial_the_api_takes_the_local_admin_token_and_the_audit_log_names_it(
    make_settings, start_server, config_dir
) -> None:
    """No TWILIO_AUTH_TOKEN and no admin configured: the quick start's `ivr queues` and
    `ivr calls` found the admin API disabled."""
    server = start_server(make_settings(twilio_auth_token=None))
    token_file = config_dir / "var" / "local_admin_token"
    assert token_file.stat().st_mode & 0o777 == 0o600
    local = {"Authorization": f"Bearer {token_file.read_text()}"}
    with httpx.Client(base_url=server.url + "/admin/api", headers=local, timeout=30) as api:
        assert api.get("/queues", headers=AUTH).status_code == 401  # no other token
        changed = api.put("/queues/gold", json={"sip_uri": "sip:gold@pbx2.example.com"},
                          headers={"X-IVR-Actor": "alice"})
        assert changed.status_code == 200, changed.text
        assert changed.json()["updated_by"] == "alice (local admin token)"
        api.put("/queues/gold", json={"sip_uri": "sip:gold@pbx3.example.com"})
        whos = [entry["who"] for entry in api.get("/audit").json()["entries"]]
        assert whos == ["local admin token", "alice (local admin token)"]


def every_method_and_path(routes: list[Route], prefix: str) -> list[tuple[str, str]]:
    """Each route's methods at a path its parameters fill in, under `prefix`."""
    return [(method, prefix + route.path.replace("{name}", "gold"))
            for route in routes for method in sorted(route.methods or ()) if method != "HEAD"]


def test_every_admin_route_is_refused_while_no_admin_is_configured(
    make_settings, start_server
) -> None:
    """The guard sits on the admin mounts, not in each handler: a route added to either list
    is refused with the rest, while the OpenAPI document and the page's styles stay public."""
    server = start_server(make_settings())  # TWILIO_AUTH_TOKEN set, no admin: no local trial
    api_routes = every_method_and_path(admin_api.routes, "/admin/api")
    page_routes = every_method_and_path(admin_pages.routes, "/admin")
    assert len(api_routes) >= 10 and len(page_routes) >= 10
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as client:
        for method, path in api_routes:
            response = client.request(method, path, json={"sip_uri": "sip:x@y.com"})
            assert response.status_code == 404, (method, path, response.text)
            assert "set IVR_ADMIN_TOKEN" in response.json()["error"], (method, path)
        for method, path in page_routes:
            response = client.request(method, path, data={"sip_uri": "sip:x@y.com"})
            assert response.status_code == 404, (method, path, response.text)
            assert "Admin access is disabled" in response.text, (method, path)
        assert client.get("/admin/api/openapi.json").json()["openapi"].startswith("3.")
        assert client.get("/admin/static/admin.css").status_code == 200


@pytest.mark.parametrize(
    ("configured", "reason"),
    [({}, "with TWILIO_AUTH_TOKEN set, it makes no local admin token"),
     ({"twilio_auth_token": None, "admin_users": {"alice": hash_password("pw", 1000)}},
      "IVR_ADMIN_USERS sign in to the admin page only")],
    ids=["twilio-token", "admin-users"])
def test_outside_a_local_trial_no_local_admin_token_is_made_and_the_404_says_why(
    make_settings, start_server, config_dir, configured, reason
) -> None:
    server = start_server(make_settings(**configured))
    response = httpx.get(server.url + "/admin/api/queues", headers=AUTH)
    assert response.status_code == 404
    assert "set IVR_ADMIN_TOKEN" in response.json()["error"]
    assert reason in response.json()["error"]
    assert not (config_dir / "var" / "local_admin_token").exists()


def test_list_and_show_queues_with_versions_and_etag(api: httpx.Client) -> None:
    queues = api.get("/queues").json()["queues"]
    names = [q["name"] for q in queues]
    assert names == sorted(names) and {"gold", "platinum", "standard"} <= set(names)
    gold = queues[names.index("gold")]
    assert gold["sip_uri"] == "sip:gold@queues.example.com"
    assert (gold["version"], gold["updated_by"]) == (1, "seed")
    assert gold["fallback_sip_uris"] == [] and gold["message_to"] == "+15550100101"
    response = api.get("/queues/gold")
    assert response.headers["etag"] == '"v1"'
    assert response.json() == gold
    assert api.get("/queues/nope").status_code == 404


def test_put_updates_with_a_new_version_and_the_next_call_uses_it(api: httpx.Client) -> None:
    response = api.put("/queues/gold", json={"sip_uri": "sip:gold@pbx2.example.com"},
                       headers={"If-Match": '"v1"', "X-IVR-Actor": "alice"})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"v2"'
    body = response.json()
    assert (body["version"], body["sip_uri"]) == (2, "sip:gold@pbx2.example.com")
    assert body["updated_by"] == "alice (admin token)"
    assert body["message_to"] is None  # PUT replaces the whole queue
    twiml = FakeTwilio(api.server_url).call(L.GOLD).text  # type: ignore[attr-defined]
    assert "<Sip>sip:gold@pbx2.example.com</Sip>" in twiml  # same process: no wait at all


def test_put_creates_a_queue_with_201(api: httpx.Client) -> None:
    response = api.put("/queues/night", json={
        "sip_uri": "sips:night@pbx.example.com:5061", "fallback_sip_uris": ["sip:n2@pbx.example.com"],
        "overflow": "standard", "message_to": "whatsapp:+15550100199", "display_name": "Night"})
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/admin/api/queues/night"
    assert response.json()["version"] == 1
    assert api.get("/queues/night").json()["overflow"] == "standard"


def test_a_body_answered_can_be_put_back_as_it_is(api: httpx.Client) -> None:
    gold = api.get("/queues/gold").json()
    changed = api.put("/queues/gold", json={**gold, "display_name": "Gold"},
                      headers={"If-Match": '"v1"'})
    assert changed.status_code == 200 and changed.json()["version"] == 2
    again = api.put("/queues/gold", json={**changed.json(), "display_name": "Gold members"},
                    headers={"If-Match": '"v2"'})
    assert again.status_code == 200 and again.json()["version"] == 3


def test_patch_changes_the_fields_given_keeps_the_others_and_the_next_call_uses_it(
    api: httpx.Client,
) -> None:
    before = api.get("/queues/gold").json()
    response = api.patch("/queues/gold", json={"sip_uri": "sip:gold@pbx2.example.com"},
                         headers={"X-IVR-Actor": "alice"})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"v2"'
    after = response.json()
    assert after == {**before, "sip_uri": "sip:gold@pbx2.example.com", "version": 2,
                     "updated_at": after["updated_at"], "updated_by": "alice (admin token)",
                     "changed": ["sip_uri"]}
    assert after["message_to"] == "+15550100101"  # kept, where a PUT would have cleared it
    twiml = FakeTwilio(api.server_url).call(L.GOLD).text  # type: ignore[attr-defined]
    assert "<Sip>sip:gold@pbx2.example.com</Sip>" in twiml
    entry = api.get("/audit").json()["entries"][0]
    assert (entry["action"], entry["queue"], entry["version"]) == ("update", "gold", 2)
    assert entry["old"]["message_to"] == entry["new"]["message_to"] == "+15550100101"
    # null: back to the default; If-Match as with PUT.
    cleared = api.patch("/queues/gold", json={"message_to": None, "fallback_sip_uris": [
        "sip:gold2@pbx2.example.com"]}, headers={"If-Match": '"v2"'})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["message_to"] is None
    assert cleared.json()["sip_uri"] == "sip:gold@pbx2.example.com"
    assert cleared.json()["fallback_sip_uris"] == ["sip:gold2@pbx2.example.com"]
    assert cleared.json()["changed"] == ["fallback_sip_uris", "message_to"]


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [("/queues/nope", {"sip_uri": "sip:a@b.com"}, {}, 404),
     ("/queues/gold", {"sip_uri": "http://not-sip"}, {}, 422),
     ("/queues/gold", {"sip_uri": None}, {}, 422),
     ("/queues/gold", {"colour": "red"}, {}, 422),
     ("/queues/gold", {"name": "platinum"}, {}, 422),
     ("/queues/gold", {"overflow": "nope"}, {}, 422),
     ("/queues/gold", ["sip:a@b.com"], {}, 422),
     ("/queues/gold", {"sip_uri": "sip:a@b.com"}, {"If-Match": '"v7"'}, 412),
     ("/queues/gold", {"sip_uri": "sip:a@b.com"}, {"If-None-Match": "*"}, 412)],
    ids=["unknown", "bad-uri", "no-uri", "unknown-field", "other-name", "bad-overflow",
         "not-an-object", "stale", "must-not-exist"],
)
def test_a_refused_patch_changes_nothing(api: httpx.Client, path, body, headers,
                                         status) -> None:
    response = api.patch(path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert api.get("/queues/gold").json()["version"] == 1
    assert api.get("/queues/nope").status_code == 404
    assert api.get("/audit").json()["total"] == 0
    malformed = api.patch("/queues/gold", content=b'{"sip_uri": ',
                          headers={"Content-Type": "application/json"})
    assert malformed.status_code == 400


def test_patches_racing_without_if_match_all_land_none_overwritten(api: httpx.Client) -> None:
    """Each patch changes one field; made together, every one is applied on top of the others
    (a patch that lost the race for a version is applied again), none undoes another."""
    patches = [{"display_name": "Gold members (24/7)"}, {"message_to": "+15550100199"},
               {"fallback_sip_uris": ["sip:gold2@queues.example.com"]},
               {"sip_uri": "sip:gold@pbx2.example.com"}, {"overflow": "standard"}]

    async def send_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(api.base_url), headers=AUTH,
                                     timeout=30) as client:
            return await asyncio.gather(*(client.patch("/queues/gold", json=patch)
                                          for patch in patches))

    assert [r.status_code for r in asyncio.run(send_all())] == [200] * len(patches)
    gold = api.get("/queues/gold").json()
    for patch in patches:
        assert {k: gold[k] for k in patch} == patch
    assert gold["version"] == 1 + len(patches)


def test_a_stale_if_match_gets_412_and_changes_nothing(api: httpx.Client) -> None:
    assert api.put("/queues/gold", json={"sip_uri": "sip:a@b.com"}).status_code == 200
    response = api.put("/queues/gold", json={"sip_uri": "sip:c@d.com"}, headers={"If-Match": '"v1"'})
    assert response.status_code == 412
    assert response.json()["current_version"] == 2
    assert api.get("/queues/gold").json()["sip_uri"] == "sip:a@b.com"
    garbage = api.put("/queues/gold", json={"sip_uri": "sip:c@d.com"}, headers={"If-Match": "nope"})
    assert garbage.status_code == 412
    assert api.put("/queues/newq", json={"sip_uri": "sip:c@d.com"},
                   headers={"If-Match": "*"}).status_code == 404


def test_writers_racing_with_the_same_etag_exactly_one_wins(api: httpx.Client) -> None:
    url = api.base_url

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=str(url), headers=AUTH, timeout=30) as client:
            return [r.status_code for r in await asyncio.gather(*(
                client.put("/queues/gold", json={"sip_uri": f"sip:w{i}@x.com"},
                           headers={"If-Match": '"v1"'}) for i in range(20)))]

    statuses = asyncio.run(race())
    assert sorted(statuses) == [200] + [412] * 19
    history = api.get("/queues/gold/history").json()["versions"]
    assert [v["version"] for v in history] == [2, 1]
    assert api.get("/audit").json()["total"] == 1


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"sip_uri": "http://gold"}, "sip_uri", "must start with sip: or sips:"),
        ({"sip_uri": "sip:gold@x.com<Hangup/>"}, "sip_uri", "markup"),
        ({}, "sip_uri", "Field required"),
        ({"sip_uri": "sip:a@b.com", "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ({"sip_uri": "sip:a@b.com", "fallback_sip_uris": ["sip:ok@b.com", "bad"]},
         "fallback_sip_uris.1", "must start with sip: or sips:"),
        ({"sip_uri": "sip:a@b.com", "message_to": "12345"}, "message_to", "E.164"),
        ({"sip_uri": "sip:a@b.com", "overflow": "ghost"}, "overflow", "'ghost' is not a queue"),
        ({"sip_uri": "sip:a@b.com", "overflow": "gold"}, "overflow", "overflow cycle"),
        ({"sip_uri": "sip:a@b.com", "name": "silver"}, "name", "does not match"),
        (["sip:a@b.com"], "", "must be a JSON object"),
    ],
    ids=["scheme", "markup", "missing", "unknown-field", "fallback", "message-to",
         "overflow-unknown", "overflow-self-cycle", "name-mismatch", "not-an-object"],
)
def test_invalid_input_gets_422_naming_the_field_and_stores_nothing(
    api: httpx.Client, body, field: str, message: str
) -> None:
    response = api.put("/queues/gold", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(e["field"] == field and message in e["message"] for e in errors), errors
    assert api.get("/queues/gold").json()["version"] == 1
    assert api.get("/audit").json()["total"] == 0


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_a_refusal_names_a_missing_overflow_along_with_the_other_bad_fields(
    api: httpx.Client, method: str
) -> None:
    """One answer names every mistake it can: a missing overflow queue too, not only once the
    other fields are fixed (found in an admin walk-through)."""
    both = api.request(method, "/queues/gold", json={"sip_uri": "http://gold", "overflow": "ghost"})
    assert both.status_code == 422
    assert {e["field"]: e["message"] for e in both.json()["errors"]} == {
        "sip_uri": "must start with sip: or sips:", "overflow": "'ghost' is not a queue"}
    fine = api.request(method, "/queues/gold", json={"sip_uri": "http://gold",
                                                     "overflow": "standard"})
    assert [e["field"] for e in fine.json()["errors"]] == ["sip_uri"]
    assert api.get("/queues/gold").json()["version"] == 1


def test_an_invalid_queue_name_gets_422(api: httpx.Client) -> None:
    response = api.put("/queues/Bad%20Name", json={"sip_uri": "sip:a@b.com"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "name"


def test_malformed_json_gets_400_and_stores_nothing(api: httpx.Client) -> None:
    response = api.put("/queues/gold", content=b'{"sip_uri": ', headers={
        "Content-Type": "application/json"})
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]
    assert api.get("/queues/gold").json()["version"] == 1


def test_delete_is_refused_while_a_flow_routes_to_the_queue(api: httpx.Client) -> None:
    response = api.delete("/queues/gold")
    assert response.status_code == 409
    assert "flow loyalty_routing" in response.json()["error"]
    assert api.get("/queues/gold").status_code == 200


def test_delete_removes_an_unused_queue_and_is_audited(api: httpx.Client) -> None:
    assert api.put("/queues/spare", json={"sip_uri": "sip:s@x.com"}).status_code == 201
    assert api.put("/queues/night", json={"sip_uri": "sip:n@x.com", "overflow": "spare"}
                   ).status_code == 201
    assert api.delete("/queues/spare").status_code == 409  # night overflows to it
    assert api.delete("/queues/night", headers={"If-Match": '"v9"'}).status_code == 412
    assert api.delete("/queues/night").status_code == 204
    assert api.get("/queues/night").status_code == 404
    assert api.delete("/queues/night").status_code == 404
    entry = api.get("/audit").json()["entries"][0]
    assert (entry["action"], entry["queue"], entry["new"]) == ("delete", "night", None)
    assert entry["old"]["sip_uri"] == "sip:n@x.com"


def test_history_lists_every_version_newest_first_with_who_when_and_what_changed(
        api: httpx.Client) -> None:
    api.put("/queues/gold", json={"sip_uri": "sip:g2@x.com"}, headers={"X-IVR-Actor": "bob"})
    api.patch("/queues/gold", json={"fallback_sip_uris": ["sip:g@y.com"]},
              headers={"X-IVR-Actor": "carol"})
    versions = api.get("/queues/gold/history").json()["versions"]
    assert [(v["version"], v["sip_uri"], v["updated_by"], v["changed"]) for v in versions] == [
        (3, "sip:g2@x.com", "carol (admin token)", ["fallback_sip_uris"]),
        (2, "sip:g2@x.com", "bob (admin token)", ["sip_uri", "message_to", "display_name"]),
        (1, "sip:gold@queues.example.com", "seed", ["sip_uri", "message_to", "display_name"])]
    assert all(v["updated_at"] for v in versions)
    assert api.get("/queues/nope/history").status_code == 404


def test_rollback_makes_a_version_current_again_as_a_new_version(api: httpx.Client) -> None:
    api.put("/queues/gold", json={"sip_uri": "sip:broken@x.com"})
    response = api.post("/queues/gold/rollback", json={"version": 1},
                        headers={"If-Match": '"v2"'})
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"v3"'
    assert (response.json()["version"], response.json()["sip_uri"]) == (
        3, "sip:gold@queues.example.com")
    assert response.json()["changed"] == ["sip_uri", "message_to", "display_name"]
    entry = api.get("/audit").json()["entries"][0]
    assert (entry["action"], entry["rolled_back_to"]) == ("rollback", 1)
    assert api.post("/queues/gold/rollback", json={"version": 1},
                    headers={"If-Match": '"v2"'}).status_code == 412
    assert api.post("/queues/gold/rollback", json={"version": 42}).status_code == 404
    assert api.post("/queues/gold/rollback", json={"version": "1"}).status_code == 422
    assert api.post("/queues/gold/rollback", json={}).status_code == 422
    assert api.post("/queues/gold/rollback", content=b"{").status_code == 400


def test_a_change_equal_to_the_current_queue_writes_nothing_and_answers_the_current_version(
        api: httpx.Client) -> None:
    """The API, the page and `ivr queues` agree: nothing to change makes no version and no
    audit entry; the answer is the current record, 200, with `changed` empty."""
    gold = api.get("/queues/gold").json()
    for method, body, headers in (
            ("PUT", gold, {}), ("PUT", gold, {"If-Match": '"v1"'}),
            ("PATCH", {"overflow": None}, {}), ("PATCH", {"sip_uri": gold["sip_uri"]},
                                                {"If-Match": "*"})):
        response = api.request(method, "/queues/gold", json=body, headers=headers)
        assert response.status_code == 200, (method, body, response.text)
        assert response.headers["etag"] == '"v1"'
        assert response.json() == {**gold, "changed": []}
    rolled_back = api.post("/queues/gold/rollback", json={"version": 1},
                           headers={"If-Match": '"v1"'})
    assert rolled_back.status_code == 200 and rolled_back.json() == {**gold, "changed": []}
    # Preconditions still hold first.
    assert api.put("/queues/gold", json=gold, headers={"If-Match": '"v7"'}).status_code == 412
    assert api.put("/queues/gold", json=gold, headers={"If-None-Match": "*"}).status_code == 412
    assert [v["version"] for v in api.get("/queues/gold/history").json()["versions"]] == [1]
    assert api.get("/audit").json()["total"] == 0
    # A real change after them is version 2, saying what it changed.
    changed = api.patch("/queues/gold", json={"overflow": "standard"},
                        headers={"If-Match": '"v1"'})
    assert (changed.json()["version"], changed.json()["changed"]) == (2, ["overflow"])


def test_the_audit_log_pages_newest_first(api: httpx.Client) -> None:
    for i in range(5):
        api.put("/queues/gold", json={"sip_uri": f"sip:g{i}@x.com"})
    page = api.get("/audit", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and (page["offset"], page["limit"]) == (1, 2)
    assert [e["new"]["sip_uri"] for e in page["entries"]] == ["sip:g3@x.com", "sip:g2@x.com"]
    first = page["entries"][0]
    assert first["old"]["sip_uri"] == "sip:g2@x.com" and first["who"] == "admin token"
    assert api.get("/audit", params={"limit": 0}).status_code == 422
    assert api.get("/audit", params={"offset": "x"}).status_code == 422


def is_queue_name(name: str) -> bool:
    try:
        check_queue_name(name)
    except ValueError:
        return False
    return True


def test_the_openapi_document_describes_every_route(api: httpx.Client) -> None:
    document = httpx.get(f"{api.server_url}/admin/api/openapi.json").json()  # type: ignore[attr-defined]
    assert document["openapi"].startswith("3.")
    assert set(document["paths"]) == {"/queues", "/queues/{name}", "/queues/{name}/history",
                                      "/queues/{name}/rollback", "/audit", "/calls",
                                      "/cache/purge", "/flows", "/flows/versions",
                                      "/flows/versions/{version}", "/flows/rollback"}
    assert set(document["paths"]["/flows/versions"]) == {"get", "post"}
    assert set(document["paths"]["/queues/{name}"]) >= {"get", "put", "patch", "delete"}
    assert "sip_uri" in document["components"]["schemas"]["QueueInput"]["properties"]
    # A write answers the fields it changed; a version of the history, what it changed.
    for path, method, status, schema in (("/queues/{name}", "patch", "200", "QueueWritten"),
                                         ("/queues/{name}/rollback", "post", "201",
                                          "QueueWritten")):
        content = document["paths"][path][method]["responses"][status]["content"]
        assert content["application/json"]["schema"]["$ref"].endswith("/" + schema)
    for schema in ("QueueWritten", "QueueVersion"):
        assert "changed" in document["components"]["schemas"][schema]["allOf"][1]["properties"]
    # The queue names it documents are the ones the API takes.
    pattern = document["paths"]["/queues/{name}"]["parameters"][0]["schema"]["pattern"]
    for name in ("gold", "vip-2_b", "9" * 64, "Gold", "-gold", "9" * 65, "gold queue", ""):
        assert bool(re.search(pattern, name)) == is_queue_name(name), name


def test_a_change_reaches_a_second_instance_on_the_next_call(
    api: httpx.Client, make_settings, start_server
) -> None:
    other = FakeTwilio(start_server(make_settings(admin_token=ADMIN)).url)
    assert "<Sip>sip:platinum@queues.example.com</Sip>" in other.call(L.PLATINUM).text
    api.put("/queues/platinum", json={"sip_uri": "sip:platinum@dr-site.example.com"})
    deadline = time.monotonic() + 2
    while "<Sip>sip:platinum@dr-site.example.com</Sip>" not in other.call(L.PLATINUM).text:
        assert time.monotonic() < deadline, "the other instance never saw the change"


def test_if_none_match_star_only_creates(api: httpx.Client) -> None:
    create_only = {"If-None-Match": "*"}
    assert api.put("/queues/fresh", json={"sip_uri": "sip:f@x.com"},
                   headers=create_only).status_code == 201
    assert api.put("/queues/fresh", json={"sip_uri": "sip:g@x.com"},
                   headers=create_only).status_code == 412
    assert api.get("/queues/fresh").json()["sip_uri"] == "sip:f@x.com"


def test_a_weak_etag_never_matches(api: httpx.Client) -> None:
    response = api.put("/queues/gold", json={"sip_uri": "sip:a@b.com"}, headers={"If-Match": 'W/"v1"'})
    assert response.status_code == 412


def test_rolling_back_a_deleted_queue_recreates_it_with_201(api: httpx.Client) -> None:
    assert api.put("/queues/spare", json={"sip_uri": "sip:s@x.com"}).status_code == 201
    assert api.delete("/queues/spare").status_code == 204
    response = api.post("/queues/spare/rollback", json={"version": 1})
    assert response.status_code == 201
    assert (response.json()["version"], response.json()["sip_uri"]) == (2, "sip:s@x.com")


def test_an_absurd_audit_offset_is_a_422_not_a_crash(api: httpx.Client) -> None:
    assert api.get("/audit", params={"offset": 10**30}).status_code == 422


def test_settings_are_the_bottom_layer_and_load_without_the_admin_package() -> None:
    """Settings check admin users' password hashes without importing ivr.admin (whose auth
    reads settings): the dependency points one way."""
    probe = ("import sys, ivr.settings; "
             "print(sorted(m for m in sys.modules if m.startswith('ivr.admin')))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            check=True, timeout=60).stdout.strip()
    assert loaded == "[]"
