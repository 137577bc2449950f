"""`ivr flows publish | versions | diff | rollback` as a user runs them, against real servers:
the quick start's loop on `ivr serve`, and each command's answers and refusals."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests import loyalty_api as L
from tests.conftest import IVR, Served, clean_env, run_ivr
from tests.servers import ServerThread, free_port
from tests.test_cli import ADMIN, answered_after
from tests.twilio_client import FakeTwilio

GOLD_SIP = "<Sip>sip:gold@queues.example.com</Sip>"
PLATINUM_SIP = "<Sip>sip:platinum@queues.example.com</Sip>"
LOYALTY = "loyalty_routing.yaml"


def route_gold_to(flows_dir: Path, queue: str) -> None:
    """Edit the loyalty flow of `flows_dir`: gold callers go to `queue`."""
    path = flows_dir / LOYALTY
    text = path.read_text()
    start = text.index("  to_gold:")
    end = text.index("\n", text.index("    queue: ", start))
    path.write_text(text[:start] + text[start:end].rsplit(" ", 1)[0] + f" {queue}" + text[end:])


def test_the_quick_start_loop_edit_diff_publish_call(
    newcomer_serve: Callable[..., Served]
) -> None:
    """On a local server (embedded Redis, local tokens), from the checkout, as the README
    shows it."""
    server = newcomer_serve()
    cwd, env = server.cwd, {**server.env, "IVR_ADMIN_URL": server.url}
    route_gold_to(cwd / "flows", "platinum")

    diff = run_ivr(cwd, env, "flows", "diff")
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.startswith(f"--- live-v1/{LOYALTY}\n+++ draft/{LOYALTY}\n@@ ")
    assert "\n-    queue: gold\n+    queue: platinum\n" in diff.stdout

    published = run_ivr(cwd, env, "flows", "publish", "--message", "gold to platinum")
    assert published.returncode == 0, published.stderr
    assert published.stdout.startswith("published version 2 (6 files from flows): live now")
    called = server.call(L.GOLD)
    assert PLATINUM_SIP in called.stdout, called.stdout + called.stderr

    versions = run_ivr(cwd, env, "flows", "versions")
    assert versions.returncode == 0, versions.stderr
    header, newest, seed = versions.stdout.splitlines()
    assert header.split() == ["VERSION", "LIVE", "PUBLISHED", "AT", "BY", "MESSAGE"]
    user = newest.split()[3]
    assert newest.split()[:2] == ["2", "live"]
    assert newest.endswith(f"{user} (local admin token)  gold to platinum")
    assert seed.split()[0] == "1" and seed.split()[2:] == ["seed", "seeded", "from", "flows"]

    same = run_ivr(cwd, env, "flows", "diff")
    assert same.stdout == "no difference: the flows in flows are version 2 (live)\n"
    against_one = run_ivr(cwd, env, "flows", "diff", "1")
    assert against_one.stdout.startswith(f"--- v1/{LOYALTY}\n+++ draft/{LOYALTY}\n")
    again = run_ivr(cwd, env, "flows", "publish")
    assert again.stdout == "unchanged: the live version 2 has these flows already\n"


@pytest.fixture
def admin_server(make_settings, start_server) -> ServerThread:
    return start_server(make_settings(admin_token=ADMIN))


def flows_at(url: str, flows_dir: Path, *args: str, stdin: int | None = subprocess.DEVNULL,
             token: str = ADMIN) -> subprocess.CompletedProcess[str]:
    """`ivr flows ARGS` against the server at `url`, its draft in `flows_dir`; stdin is not a
    terminal unless given."""
    return subprocess.run([*IVR, "flows", *args], cwd=flows_dir.parent, stdin=stdin,
                          env=clean_env(IVR_ADMIN_URL=url, IVR_ADMIN_TOKEN=token,
                                        IVR_FLOWS_DIR=str(flows_dir)),
                          capture_output=True, text=True, timeout=60)


def live_version(server: ServerThread) -> int:
    return httpx.get(server.url + "/admin/api/flows", timeout=10,
                     headers={"Authorization": f"Bearer {ADMIN}"}).json()["version"]


def test_a_publish_of_broken_flows_prints_every_problem_and_publishes_nothing(
    admin_server: ServerThread, config_dir: Path
) -> None:
    flows = config_dir / "flows"
    route_gold_to(flows, "gld")
    (flows / "broken.yaml").write_text("trigger: [unclosed\n")
    refused = flows_at(admin_server.url, flows, "publish")
    assert refused.returncode == 1
    lines = refused.stdout.splitlines()
    # Named as `ivr flows validate` names them: IVR_FLOWS_DIR as given, then the file.
    assert [line.split(":")[0] for line in lines] == [f"{flows}/broken.yaml", f"{flows}/{LOYALTY}"]
    assert lines[1].startswith(f"{flows}/{LOYALTY}: steps.to_gold.queue: ")
    assert "did you mean 'gold'?" in lines[1]
    assert refused.stderr == ("ivr: 2 problems: nothing was published; the live version is "
                              "unchanged\n")
    assert live_version(admin_server) == 1


def test_publish_with_no_flow_files_says_so(admin_server: ServerThread, tmp_path: Path) -> None:
    empty = tmp_path / "nothing"
    empty.mkdir()
    result = flows_at(admin_server.url, empty, "publish")
    assert result.returncode == 1
    assert result.stderr == f"ivr: {empty}: no flow files (*.yaml, *.yml); set IVR_FLOWS_DIR\n"


def test_publish_where_the_flows_directory_does_not_exist_names_it_whole(
    admin_server: ServerThread, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = run_ivr(elsewhere, clean_env(IVR_ADMIN_URL=admin_server.url, IVR_ADMIN_TOKEN=ADMIN,
                                          IVR_FLOWS_DIR="flows"), "flows", "publish")
    assert result.returncode == 1
    assert result.stderr == (f"ivr: {elsewhere}/flows: no such directory: set IVR_FLOWS_DIR to "
                             "the directory of the flow files (*.yaml, *.yml); a relative path "
                             "is relative to the current directory\n")


def answered(url: str, flows_dir: Path, answer: str, *args: str
             ) -> subprocess.CompletedProcess[str]:
    """`ivr flows ARGS` at a terminal (a pseudo-terminal), typing `answer`."""
    terminal, command_side = os.openpty()
    try:
        os.write(terminal, answer.encode() + b"\n")
        return flows_at(url, flows_dir, *args, stdin=command_side)
    finally:
        os.close(terminal)
        os.close(command_side)


@pytest.fixture
def version_two(admin_server: ServerThread, config_dir: Path) -> Path:
    """The draft with gold routed to platinum, published as version 2; its directory."""
    flows = config_dir / "flows"
    route_gold_to(flows, "platinum")
    assert flows_at(admin_server.url, flows, "publish").returncode == 0
    return flows


def test_rollback_shows_what_changes_asks_and_makes_the_old_flows_a_new_version(
    admin_server: ServerThread, version_two: Path
) -> None:
    flows = version_two
    twilio = FakeTwilio(admin_server.url)
    assert PLATINUM_SIP in twilio.call(L.GOLD).text

    # What would change is printed first, whether anyone can answer or not.
    script = flows_at(admin_server.url, flows, "rollback", "1")
    assert script.returncode == 1
    assert script.stdout.startswith(f"--- live-v2/{LOYALTY}\n+++ v1/{LOYALTY}\n@@ ")
    assert "\n-    queue: platinum\n+    queue: gold\n" in script.stdout
    assert script.stderr == ("ivr: not rolled back: rolling the flows back to version 1 asks "
                             "for a yes at a terminal; to roll them back from a script, add "
                             "--yes\n")
    kept = answered(admin_server.url, flows, "n", "rollback", "1")
    assert kept.returncode == 1
    assert kept.stdout == script.stdout
    assert kept.stderr == ("Put version 1's flows back into service, as version 3? [y/N] "
                           "ivr: not rolled back\n")
    assert live_version(admin_server) == 2

    rolled = answered(admin_server.url, flows, "y", "rollback", "1")
    assert rolled.returncode == 0, rolled.stderr
    assert rolled.stdout == (script.stdout
                             + "rolled back: version 1's flows are version 3, live now\n")
    assert GOLD_SIP in twilio.call(L.GOLD).text
    again = flows_at(admin_server.url, flows, "rollback", "1", "--yes")
    assert again.stdout == "unchanged: the live version 3 has the flows of version 1 already\n"
    back = flows_at(admin_server.url, flows, "rollback", "2", "--yes")
    assert back.stdout.startswith(f"--- live-v3/{LOYALTY}\n+++ v2/{LOYALTY}\n@@ ")
    assert "\n-    queue: gold\n+    queue: platinum\n" in back.stdout
    assert back.stdout.endswith("\nrolled back: version 2's flows are version 4, live now\n")


def test_a_refused_rollback_names_each_problem_and_what_to_do(
    admin_server: ServerThread, config_dir: Path
) -> None:
    flows = config_dir / "flows"
    team_choice = flows / "team_choice.yaml"
    team_choice.write_text(team_choice.read_text().replace("queue: operator", "queue: support"))
    assert flows_at(admin_server.url, flows, "publish").returncode == 0
    deleted = httpx.delete(admin_server.url + "/admin/api/queues/operator", timeout=10,
                           headers={"Authorization": f"Bearer {ADMIN}"})
    assert deleted.status_code == 204, deleted.text

    refused = flows_at(admin_server.url, flows, "rollback", "1", "--yes")
    assert refused.returncode == 1
    # What would change, then the problem.
    assert refused.stdout.startswith("--- live-v2/team_choice.yaml\n+++ v1/team_choice.yaml\n")
    assert refused.stdout.endswith("\nteam_choice.yaml: steps.to_operator.queue: 'operator' is "
                                   "not a queue\n")
    assert refused.stderr == (
        "ivr: 1 problem: nothing was rolled back; the live version is unchanged\n"
        "ivr: version 1's flows no longer load as things are now: create what they name again "
        "(a queue: `ivr queues set NAME SIP_URI --create`), or publish a fix instead (`ivr flows "
        "publish`)\n")
    assert live_version(admin_server) == 2


@pytest.mark.parametrize("command", ["diff", "rollback"])
def test_the_version_argument_is_explained_in_help(command: str, config_dir: Path) -> None:
    shown = flows_at("http://127.0.0.1:1", config_dir / "flows", command, "--help")
    assert shown.returncode == 0
    assert "  N " in shown.stdout
    explained = shown.stdout.split("  N ", 1)[1].split("\n")[0].strip()
    assert explained.startswith("the version ")


def test_diff_with_exit_code_says_by_its_status_whether_the_draft_differs(
    admin_server: ServerThread, config_dir: Path
) -> None:
    flows = config_dir / "flows"
    same = flows_at(admin_server.url, flows, "diff", "--exit-code")
    assert (same.returncode, same.stderr) == (0, "")
    route_gold_to(flows, "platinum")
    differs = flows_at(admin_server.url, flows, "diff", "--exit-code")
    assert (differs.returncode, differs.stderr) == (1, "")
    assert "\n-    queue: gold\n+    queue: platinum\n" in differs.stdout
    assert flows_at(admin_server.url, flows, "diff").returncode == 0  # as before, without it
    down = flows_at(f"http://127.0.0.1:{free_port()}", flows, "diff", "--exit-code")
    assert down.returncode == 2


def test_rollback_is_refused_when_someone_publishes_while_asking(
    admin_server: ServerThread, version_two: Path
) -> None:
    """The yes is for the change shown: a publish made before it was typed stops it."""
    flows = version_two

    def someone_publishes() -> None:
        route_gold_to(flows, "standard")
        assert flows_at(admin_server.url, flows, "publish").returncode == 0  # version 3

    status, _, errors = answered_after(admin_server.url, someone_publishes, "rollback", "1",
                                       command="flows")
    assert status == 1
    assert errors.split("[y/N] ")[1].startswith("ivr: not rolled back: someone published flows "
                                      "meanwhile (If-Match is stale: the live flows version is "
                                      "now 3); run the command again")
    assert live_version(admin_server) == 3


@pytest.mark.parametrize("args", [("diff", "9"), ("rollback", "9", "--yes")])
def test_a_version_that_does_not_exist_is_named(admin_server: ServerThread, config_dir: Path,
                                                args) -> None:
    result = flows_at(admin_server.url, config_dir / "flows", *args)
    assert result.returncode == 1
    assert result.stderr == "ivr: there is no flows version 9 (see `ivr flows versions`)\n"


def test_a_wrong_token_and_a_server_that_is_down_are_one_line_each(
    admin_server: ServerThread, config_dir: Path
) -> None:
    flows = config_dir / "flows"
    wrong = flows_at(admin_server.url, flows, "versions", token="wrong")
    assert wrong.returncode == 1
    assert wrong.stderr == ("ivr: 401: a valid `Authorization: Bearer <admin token>` header is "
                            "required (check --token or IVR_ADMIN_TOKEN)\n")
    down = f"http://127.0.0.1:{free_port()}"
    result = flows_at(down, flows, "publish")
    assert result.returncode == 1
    assert result.stderr.startswith(f"ivr: cannot reach {down}: ")
    assert result.stderr.endswith("(is `ivr serve` running? set IVR_ADMIN_URL or pass "
                                  "--server)\n")
    assert result.stderr.count("\n") == 1
