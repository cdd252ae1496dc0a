"""The operations CLI's offline commands: previews, escalation times, event validation, help."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ops import contract
from ops.broker import free_port
from ops.cli import check, complete, main, resolve_bootstrap, service_urls
from ops.examples import EXAMPLES, example
from ops.topicreader import ADVICE
from services.invitations.tokens import issue_token
from shared.envelope import ERROR_KINDS, DeadLetter
from shared.mail.unsubscribe import UnsubscribeLinks


def test_help_explains_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("publish", "dlq", "lag", "preview", "escalation-time"):
        assert command in out
    with pytest.raises(SystemExit):
        main(["dlq", "replay", "--help"])
    assert "never sends an e-mail twice" in capsys.readouterr().out


def test_every_example_is_valid_for_its_service() -> None:
    for name in EXAMPLES:
        target, key = check(example(name))
        assert target.topic.startswith("customersource.") and key


def test_there_is_an_example_of_every_input_type_of_the_contract() -> None:
    inputs = {event_type for topic in contract.published().values() for event_type in topic.types}
    assert {event_type for event_type, _, _ in EXAMPLES.values()} == inputs and len(inputs) == 13


def test_print_gives_the_json_to_start_from_and_needs_no_broker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")  # nothing listens there
    assert main(["publish", "--example", "post-answered", "--print"]) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    assert printed["type"] == "customersource.newsgroup.post_answered.v1" and printed["data"]["post_id"] == "POST-1001"
    assert check(printed)[1] == "POST-1001" and "broker" not in err
    assert main(["publish", "--example", "plan-renewed", "--example", "email-changed", "--print"]) == 0
    assert [e["type"] for e in json.loads(capsys.readouterr().out)] == [
        "customersource.plan.renewed.v1", "customersource.professional.email_changed.v1"]


def test_hand_written_events_get_their_envelope_and_bad_ones_a_reason() -> None:
    event = complete({"type": "customersource.plan.renewed.v1",
                      "data": {"plan_id": "PLAN-1", "account_id": "ACC-1", "expires_on": "2027-01-31"}})
    assert event["specversion"] == "1.0" and event["id"] and event["time"]
    assert check(event)[1] == "PLAN-1"
    with pytest.raises(DeadLetter) as caught:
        check(complete({"type": "customersource.plan.renewed.v2", "data": {}}))
    assert caught.value.kind == "unknown_type" and "customersource.plan.renewed.v1" in caught.value.reason


def test_preview_renders_any_template_in_any_language(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "reminder.html"
    assert main(["preview", "expiry", "plan_expiry_reminder", "--language", "fr", "--out", str(out)]) == 0
    html = out.read_text()
    assert '<html lang="fr">' in html and "Microsoft Dynamics NAV" in html
    assert "wrote " in capsys.readouterr().out
    assert main(["preview", "support", "escalation_author", "--language", "da", "--text"]) == 0
    assert capsys.readouterr().out.startswith("Subject: ")
    assert main(["preview", "support", "no_such_template"]) == 2
    assert "escalation_support" in capsys.readouterr().err


def test_escalation_time(capsys: pytest.CaptureFixture[str]) -> None:
    # The contract's examples: Friday 15:00 -> Tuesday 15:00; Saturday 10:00 -> Wednesday 00:00.
    assert main(["escalation-time", "--posted", "2026-11-27T15:00", "--country", "FR"]) == 0
    out = capsys.readouterr().out
    assert "due      Tuesday 2026-12-01 15:00 CET" in out and "Sat 2026-11-28" in out
    assert main(["escalation-time", "--posted", "2026-11-28T10:00", "--country", "US"]) == 0
    assert "due      Wednesday 2026-12-02 00:00 EST" in capsys.readouterr().out
    # Christmas in Great Britain, with the substitute Boxing Day.
    assert main(["escalation-time", "--posted", "2026-12-24T10:00", "--country", "GB"]) == 0
    out = capsys.readouterr().out
    assert "due      Wednesday 2026-12-30 10:00 GMT" in out and "Boxing Day (observed)" in out


def test_the_cli_uses_the_running_local_systems_broker_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """After `make run` picked another port, the CLI run from that folder goes to that broker, not 9092."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    assert resolve_bootstrap(None) == ("127.0.0.1:9092", "the default")
    (tmp_path / "var").mkdir()
    (tmp_path / "var" / "services.json").write_text(
        '{"broker": "127.0.0.1:39092", "services": {"invitations": "http://127.0.0.1:18001"}}')
    assert resolve_bootstrap(None)[0] == "127.0.0.1:39092"
    assert service_urls([])["invitations"] == "http://127.0.0.1:18001"
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka.example:9092")
    assert resolve_bootstrap(None) == ("kafka.example:9092", "KAFKA_BOOTSTRAP_SERVERS")
    assert resolve_bootstrap("other:9092") == ("other:9092", "--bootstrap")
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS")
    # A broker that does not answer is refused with a clear message naming it and where it came from.
    silent = f"127.0.0.1:{free_port()}"
    (tmp_path / "var" / "services.json").write_text(f'{{"broker": "{silent}", "services": {{}}}}')
    assert main(["dlq", "list"]) != 0
    err = capsys.readouterr().err
    assert f"broker {silent} (from the local system started by `make run`" in err
    assert f"Kafka at {silent}" in err and "does not answer" in err


def test_every_error_kind_has_advice_and_only_broken_content_is_not_replayable() -> None:
    assert set(ADVICE) == set(ERROR_KINDS)
    assert {kind for kind, advice in ADVICE.items() if not advice.replayable} == {
        "unparseable", "not_cloudevent", "schema_invalid", "oversized"}


def test_the_leak_scan_names_what_it_finds_without_quoting_it() -> None:
    """The scan every process-level test runs on its services' logs and metrics when it stops them."""
    from tests.support.process import leaks

    env = {"INVITATION_SECRET": "s3cret-value-for-the-test", "UNSUBSCRIBE_PREVIOUS_SECRETS": "old-one-12345,old-two-67890"}
    assert leaks("nothing to see", env) == []
    assert leaks("key=s3cret-value-for-the-test", env) == ["INVITATION_SECRET"]
    assert leaks("old-two-67890", env) == ["UNSUBSCRIBE_PREVIOUS_SECRETS"]
    invitation, _ = issue_token(secret="s" * 32, token_id="t1", professional_id="PRO-1", account_id="ACC-1",
                                email="maria@example.com", issued_at=datetime.now(UTC), ttl=timedelta(days=14))
    assert leaks(f"GET /invitations/accept?token={invitation} HTTP/1.1", {}) == ["an invitation token"]
    assert leaks("https://portal.example.com/invitations/accept?token=cs1.sample.sample.sample", {}) == []
    links = UnsubscribeLinks(base_url="https://portal.example.com", secret="u" * 32, domain="example.com")
    unsubscribe = links.token("partner-digest", "sam@example.com")
    assert leaks(f"POST /unsubscribe/{unsubscribe} HTTP/1.1", {}) == ["an unsubscribe token"]
    assert leaks(f'{{"link": "{unsubscribe}"}}', {}) == ["an unsubscribe token"]  # wherever it is
    assert leaks(f"<{'a' * 20}.{'b' * 43}@example.com>", {}) == []  # the same shape, but not a list and an address
