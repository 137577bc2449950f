"""Queue configuration: SIP URIs per RFC 3261 as Twilio dials them, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ivr.queues import QueueConfigError, check_sip_uri, load_queue_file

VALID = [
    "sip:gold@queues.example.com",
    "sips:gold@queues.example.com:5061",
    "sip:+15551234567@pbx.example.com;user=phone",
    "sip:agent%20one@pbx.example.com",
    "sip:queue@10.0.0.5",
    "sip:queue@[2001:db8::1]:5060",
    "sip:queue@pbx.example.com;transport=tls?X-Tier=gold&X-Flow=loyalty",
    "sip:user:secret@pbx.example.com",
    "sip:pbx.example.com",
    "SIP:gold@Queues.Example.COM",
]

INVALID = [
    ("", "required"),
    ("gold@queues.example.com", "must start with sip: or sips:"),
    ("tel:+15551234567", "must start with sip: or sips:"),
    ("sip:gold@queues.example.com\n", "whitespace"),
    ("sip:go ld@queues.example.com", "whitespace"),
    ("sip:gold@queues.example.com<Hangup/>", "markup"),
    ('sip:gold@example.com"', "markup"),
    ("sip:@queues.example.com", "not a valid SIP URI"),
    ("sip:gold@", "not a valid SIP URI"),
    ("sip:gold@-queues.example.com", "invalid host name"),
    ("sip:gold@queues.123", "invalid host name"),
    ("sip:gold@300.1.1.1", "invalid IPv4 host"),
    ("sip:gold@[::zz]", "not a valid SIP URI"),
    ("sip:gold@[1::2::3]", "invalid IPv6 host"),
    ("sip:gold@queues.example.com:0", "invalid port"),
    ("sip:gold@queues.example.com:99999", "invalid port"),
    ("sip:gold%zz@queues.example.com", "not a valid SIP URI"),
    ("sip:" + "a" * 250 + "@x.com", "under 255"),
]


@pytest.mark.parametrize("uri", VALID)
def test_valid_sip_uris_are_accepted(uri: str) -> None:
    assert check_sip_uri(uri) == uri


@pytest.mark.parametrize(("uri", "message"), INVALID, ids=[u[:40] or "empty" for u, _ in INVALID])
def test_invalid_sip_uris_are_rejected_saying_why(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_sip_uri(uri)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "queues.yaml"
    path.write_text(text)
    return path


def test_the_shipped_queues_file_is_valid() -> None:
    config = load_queue_file(Path(__file__).parent.parent / "sip_config" / "queues.yaml")
    assert {"gold", "platinum", "standard"} <= set(config.queues)


def test_a_bad_uri_in_the_file_names_the_file_the_queue_and_the_field(tmp_path: Path) -> None:
    path = write(tmp_path, 'queues:\n  gold: {sip_uri: "http://gold"}\n')
    with pytest.raises(QueueConfigError) as error:
        load_queue_file(path)
    assert str(error.value) == f"{path}: queues.gold.sip_uri: must start with sip: or sips:"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("queues:\n  gold: {}\n", "queues.gold.sip_uri: missing: it is required"),
        ("queues:\n  gold: {sip_uri: 'sip:a@b.com', colour: red}\n",
         "queues.gold: unknown field 'colour': the fields are display_name, "
         "fallback_sip_uris, message_to, overflow, sip_uri"),
        ("queues:\n  Gold!: {sip_uri: 'sip:a@b.com'}\n", "queue names are 1 to 64"),
        ("queues: {}\n", "queues: must not be empty"),
        ("queues:\n  gold: {sip_uri: 'sip:a@b.com', overflow: silver}\n",
         "overflow 'silver' is not a queue"),
        ("queues:\n  a: {sip_uri: 'sip:a@b.com', overflow: b}\n"
         "  b: {sip_uri: 'sip:b@b.com', overflow: a}\n", "overflow cycle a -> b -> a"),
        ("queues:\n  gold: {sip_uri: 'sip:a@b.com', message_to: '555-1234'}\n",
         "queues.gold.message_to: must be an E.164 number"),
        ("queues:\n  gold: {sip_uri: 'sip:a@b.com', fallback_sip_uris: ['sip:ok@b.com', 'x']}\n",
         "queues.gold.fallback_sip_uris.1: must start with sip: or sips:"),
        ("queues:\n  gold: {sip_uri: 'sip:a@b.com'}\n  gold: {sip_uri: 'sip:c@b.com'}\n",
         "duplicate key 'gold'"),
        ("queues: [\n", "line 2, column 1: the file ends where a value should be"),
        ("- just a list\n", r"expected a mapping \(name: value\), got a list"),
    ],
    ids=["no-uri", "unknown-field", "bad-name", "no-queues", "overflow-unknown", "overflow-cycle",
         "bad-message-to", "bad-fallback", "duplicate", "bad-yaml", "not-a-mapping"],
)
def test_queue_file_problems_are_reported_clearly(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(QueueConfigError, match=message):
        load_queue_file(write(tmp_path, text))


def test_a_yaml_error_names_the_file_at_its_line_and_a_huge_file_is_refused(
    tmp_path: Path
) -> None:
    """PyYAML's message said `in "<unicode string>", line 2` (a flow author's walk-through);
    a file of megabytes (a log pasted in) took seconds to parse at every start."""
    path = write(tmp_path, "queues:\n  gold: [\n")
    with pytest.raises(QueueConfigError) as broken:
        load_queue_file(path)
    assert "<unicode string>" not in str(broken.value)
    assert str(broken.value).startswith(f"{path}: line 3, column 1: ")
    huge = write(tmp_path, "queues:\n  gold: {sip_uri: 'sip:a@b.com'}\n" + "#" * 2_000_000)
    with pytest.raises(QueueConfigError, match="over the 1,048,576 a config file may have"):
        load_queue_file(huge)


def test_a_missing_queue_file_says_which_setting_to_fix(tmp_path: Path) -> None:
    with pytest.raises(QueueConfigError, match="file not found.*IVR_SIP_CONFIG"):
        load_queue_file(tmp_path / "nope.yaml")


def test_a_whatsapp_messaging_target_is_accepted(tmp_path: Path) -> None:
    path = write(tmp_path, "queues:\n  gold: {sip_uri: 'sip:a@b.com', message_to: "
                 "'whatsapp:+15557770001'}\n")
    assert load_queue_file(path).queues["gold"].message_to == "whatsapp:+15557770001"
