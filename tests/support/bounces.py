"""The corpus of bounce and complaint reports (tests/support/reports/), filled in for one delivery."""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "reports"
RETURNED_DATE = "Date: Sun, 06 Dec 2026 08:12:01 +0000"  # postfix_hard.eml's returned e-mail


def report(name: str, *, recipient: str, message_id: str, sender: str, sent_at: datetime | None = None) -> bytes:
    """Report ``name`` about the e-mail ``message_id`` to ``recipient``, sent with envelope sender ``sender``
    (``sent_at``: the returned e-mail's Date, in the reports that return one as postfix_hard.eml does), CRLF."""
    text = (CORPUS / name).read_text()
    for key, value in {"RECIPIENT": recipient, "MESSAGE_ID": message_id, "ENVELOPE_SENDER": sender}.items():
        text = text.replace("{{" + key + "}}", value)
    if sent_at is not None:
        text = text.replace(RETURNED_DATE, f"Date: {format_datetime(sent_at)}")
    return text.replace("\n", "\r\n").encode()
