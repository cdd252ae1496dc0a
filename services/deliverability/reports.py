"""Reading bounce and complaint reports: what a mail server sent back to the bounce address.

- RFC 3464 delivery status notifications (``multipart/report; report-type=delivery-status``): one report per
  failed or delayed recipient, with its status (``5.1.1``), the diagnostic, and the returned message's
  Message-ID (from its ``text/rfc822-headers`` or ``message/rfc822`` part). Postfix, Exchange, Gmail and most
  MTAs send these. A recipient that was delivered, relayed or expanded is not a bounce.
- RFC 5965 feedback reports (``report-type=feedback-report``): a complaint, naming the original recipient when
  the mailbox provider does (many redact it: then only the VERP tag can name the delivery) and the original
  envelope sender, whose VERP tag names the delivery.
- Anything else (Exim's and qmail's plain-text bounces, older Exchange, ...): flufl.bounce finds the addresses
  that failed, permanently or not; the returned message's Message-ID is looked for in the text.

Nothing here trusts the report: the listener keeps a report only if it names a delivery we made to the
recipient it says failed (:mod:`services.deliverability.listener`).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, message_from_string, policy
from email.message import Message
from email.utils import parseaddr, parsedate_to_datetime
from typing import Literal

from flufl.bounce import all_failures

log = logging.getLogger("customersource.deliverability")

Kind = Literal["hard", "soft", "complaint"]

DIAGNOSTIC_MAX = 500
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_MESSAGE_ID = re.compile(r"^\s*Message-ID:\s*<([^<>\s]{1,250})>", re.IGNORECASE | re.MULTILINE)
_ENHANCED_IN_TEXT = re.compile(r"\b([45]\.\d{1,3}\.\d{1,3})\b")
COMPLAINTS = frozenset({"abuse", "fraud", "virus", "other"})
"""The feedback types (RFC 5965 section 7.3) that are a recipient's complaint; ``not-spam`` (the reverse) and
``auth-failure`` (RFC 6591: about the sender's authentication) are not."""


@dataclass(frozen=True, slots=True)
class Report:
    """One recipient's failure (or one complaint), as a report says it."""

    kind: Kind
    recipients: tuple[str, ...]  # the address that failed (or complained) as the report names it, lower-cased:
    # the original recipient and the final one when they differ (a forward); none if the report hides it
    status: str | None  # the enhanced status code (RFC 3463), e.g. "5.1.1"
    diagnostic: str  # at most DIAGNOSTIC_MAX characters, control characters removed
    message_id: str | None  # the returned message's Message-ID, without angle brackets
    original_sender: str | None  # the returned message's envelope sender, if the report says it (VERP)
    fingerprint: str  # the same for the same report delivered twice
    sent_at: datetime | None = None  # the returned message's Date (when we sent it), if the report returns it


def clean(text: str, limit: int = DIAGNOSTIC_MAX) -> str:
    """Free text from a report, safe to log, publish and show: no control or bidirectional characters (each run
    becomes one space), at most ``limit`` characters."""
    return _CONTROL.sub(" ", text).strip()[:limit]


def read(raw: bytes) -> list[Report]:
    """The reports in one received message (none if it is not a bounce or a complaint). The standard reports are
    read with the standard library's current policy, which decodes UTF-8 in header fields (a diagnostic in the
    reporting server's language); a message it cannot read so is read as the older policy reads it."""
    try:
        return _read(message_from_bytes(raw, policy=policy.default), raw)
    except Exception:  # the header parsers of the current policy raise on some malformed fields
        log.warning("a received message was read with the compat32 policy", exc_info=True)
        return _read(message_from_bytes(raw, policy=policy.compat32), raw)


def _read(message: Message, raw: bytes) -> list[Report]:
    fingerprint = _fingerprint(message, raw)
    if message.get_content_type() == "multipart/report":
        report_type = str(message.get_param("report-type") or "").lower()
        if report_type == "delivery-status":
            found = list(_delivery_status(message, fingerprint))
            if found:
                return found
        elif report_type == "feedback-report":
            return list(_feedback(message, fingerprint))
    # flufl.bounce's detectors were written for the older policy's messages (GNU Mailman's).
    return list(_heuristic(message_from_bytes(raw, policy=policy.compat32), fingerprint))


def _fingerprint(message: Message, raw: bytes) -> str:
    """The report's identity: its own Message-ID if it has one, else a digest of its body (not of its header
    fields, to which each relay on the way adds its own: the same report delivered twice has one identity)."""
    own = str(message.get("Message-ID") or "").strip()
    if own:
        return hashlib.sha256(own.encode("utf-8", "replace")).hexdigest()
    body = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[-1]
    return hashlib.sha256(body).hexdigest()


def _parts(message: Message) -> Iterator[Message]:
    yield from (part for part in message.walk() if part is not message)


def _returned(message: Message) -> Message | None:
    """The headers of the message that bounced, as the report returns them."""
    for part in _parts(message):
        kind = part.get_content_type()
        if kind == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(part.get_payload())
            return message_from_string(text, policy=policy.default)
        if kind == "message/rfc822":
            inner = part.get_payload()
            if isinstance(inner, list) and inner:
                first = inner[0]
                return first if isinstance(first, Message) else None
    return None


def _date(returned: Message | None) -> datetime | None:
    try:
        value = parsedate_to_datetime(str(returned.get("Date") or "")) if returned is not None else None
    except (TypeError, ValueError, IndexError):
        return None
    return value.astimezone(UTC) if value is not None and value.tzinfo is not None else None


def _message_id(returned: Message | None) -> str | None:
    if returned is None:
        return None
    value = str(returned.get("Message-ID") or "").strip()
    return value.strip("<>").strip() or None if value else None


def _address(field: str | None) -> str | None:
    """An address from a DSN or ARF field (``rfc822; jane@example.com``, or just the address)."""
    if not field:
        return None
    value = str(field).split(";", 1)[-1].strip()
    address = parseaddr(value)[1] or value
    address = clean(address, 320).lower()
    return address if "@" in address else None


def _named(*fields: str | None) -> tuple[str, ...]:
    """The distinct addresses of those fields, in order."""
    return tuple(dict.fromkeys(address for field in fields if (address := _address(field)) is not None))


def _delivery_status(message: Message, fingerprint: str) -> Iterator[Report]:
    status_part = next((p for p in _parts(message) if p.get_content_type() == "message/delivery-status"), None)
    if status_part is None:
        return
    blocks = status_part.get_payload()
    if not isinstance(blocks, list) or len(blocks) < 2:
        return
    returned = _returned(message)
    message_id = _message_id(returned)
    sender = _address(returned.get("Return-Path")) if returned is not None else None
    for block in blocks[1:]:  # the first block is about the message, the others one recipient each
        if not isinstance(block, Message):
            continue
        action = str(block.get("Action") or "").strip().lower()
        status = str(block.get("Status") or "").strip().split()[0:1]
        code = status[0] if status and _STATUS.match(status[0]) else None
        if action in ("delivered", "relayed", "expanded") or (code is not None and code.startswith("2")):
            continue
        if action == "failed" and code is not None and code.startswith("5"):
            kind: Kind = "hard"
        elif action in ("failed", "delayed") or code is not None:
            kind = "soft"  # delayed, or failed without a permanent status: the server will try again, or we may
        else:
            continue
        recipients = _named(block.get("Original-Recipient"), block.get("Final-Recipient"))
        diagnostic = str(block.get("Diagnostic-Code") or "").split(";", 1)[-1]
        yield Report(kind=kind, recipients=recipients, status=code, diagnostic=clean(diagnostic),
                     message_id=message_id, original_sender=sender, fingerprint=fingerprint, sent_at=_date(returned))


def _feedback(message: Message, fingerprint: str) -> Iterator[Report]:
    fields = next((p for p in _parts(message) if p.get_content_type() == "message/feedback-report"), None)
    if fields is None:
        return
    block = fields.get_payload()
    if isinstance(block, list):  # parsed as an embedded message: its headers are the report's fields
        block = block[0] if block else None
    if not isinstance(block, Message):
        return
    returned = _returned(message)
    feedback_type = clean(str(block.get("Feedback-Type") or "abuse"), 40).lower()
    if feedback_type not in COMPLAINTS:
        return
    # Only the report's own field names the recipient: the returned message's To may be redacted, or a list's.
    recipients = _named(block.get("Original-Rcpt-To"))
    yield Report(kind="complaint", recipients=recipients, status=None, diagnostic=f"feedback-type: {feedback_type}",
                 message_id=_message_id(returned), original_sender=_address(block.get("Original-Mail-From")),
                 fingerprint=fingerprint, sent_at=_date(returned))


def _heuristic(message: Message, fingerprint: str) -> Iterator[Report]:
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # some of the library's heuristics fail on malformed messages: then it is no bounce we know
        log.warning("bounce heuristics failed on a message", exc_info=True)
        return
    if not temporary and not permanent:
        return
    returned = _returned(message)
    text = _text(message)
    message_id = _message_id(returned)
    if message_id is None and (match := _MESSAGE_ID.search(text)):
        message_id = match.group(1)
    status = _ENHANCED_IN_TEXT.search(text)
    failures: tuple[tuple[Kind, frozenset[bytes]], ...] = (("hard", permanent), ("soft", temporary - permanent))
    for kind, addresses in failures:
        for raw_address in sorted(addresses):
            recipients = _named(raw_address.decode("utf-8", "replace"))
            code = status.group(1) if status and status.group(1)[0] == ("5" if kind == "hard" else "4") else None
            line = _first_line_with(text, recipients[0]) if recipients else ""
            yield Report(kind=kind, recipients=recipients, status=code, diagnostic=clean(line),
                         message_id=message_id, original_sender=None, fingerprint=fingerprint, sent_at=_date(returned))


def _text(message: Message) -> str:
    chunks = []
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                chunks.append(payload.decode(part.get_content_charset() or "utf-8", "replace"))
    return "\n".join(chunks)


def _first_line_with(text: str, address: str) -> str:
    """The line of the bounce's text that names the address, and the one after (Exim puts the reason there)."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if address in line.lower():
            return " ".join(chunk.strip() for chunk in lines[index:index + 2])
    return ""
