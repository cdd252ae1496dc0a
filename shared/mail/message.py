"""Building the RFC 5322 message.

Headers go through the standard library's proven encoders (``email.policy.SMTP.fold``,
``email.utils.formataddr``); the multipart body is assembled directly, which is several times
cheaper than ``EmailMessage`` and just as strict: every header value is made single-line first,
so no input string can add a header.
"""

from __future__ import annotations

import base64
import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.utils import format_datetime, formataddr, parseaddr

from shared.settings import check_address

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
# Bidirectional controls and marks: they can make a subject or a name read differently than it is.
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s{2,}")


def header_safe(value: str, *, limit: int = 200) -> str:
    """One line, no control or bidirectional characters, bounded length."""
    cleaned = _SPACES.sub(" ", _UNSAFE.sub(" ", _BIDI.sub("", value))).strip()
    # An RFC 2047 encoded-word in the input would be decoded by the header parser (and by mail
    # readers), smuggling characters past the checks above: break the "=?" opener.
    cleaned = cleaned.replace("=?", "= ?")
    if len(cleaned) > limit:
        cleaned = cleaned[: limit - 1].rstrip() + "…"
    return cleaned


def usable_address(address: str) -> bool:
    try:
        check_address(address)
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class OutgoingMail:
    """One message to one recipient, ready for SMTP's DATA as it is: CRLF line endings, ending in CRLF,
    no line starting with a dot (dot-stuffed, RFC 5321 4.5.2), plain ASCII envelope addresses."""

    sender: str
    recipient: str
    data: bytes
    message_id: str


def _fold(name: str, value: str) -> bytes:
    if value.isascii() and len(name) + len(value) < 996 and not _UNSAFE.search(value):
        # Plain ASCII on one line (RFC 5322 allows 998): the standard library would move a value
        # that does not fit in 78 columns to a continuation line, which some readers show with a
        # leading space.
        return f"{name}: {value}\r\n".encode("ascii")
    header = policy.SMTP.header_factory(name, value)
    folded: str = header.fold(policy=policy.SMTP)
    return folded.encode("ascii")


def _body(content: str, content_type: str) -> bytes:
    encoded = base64.encodebytes(content.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8"))
    return (
        f"Content-Type: {content_type}; charset=\"utf-8\"\r\n"
        "Content-Transfer-Encoding: base64\r\n\r\n"
    ).encode("ascii") + encoded.replace(b"\n", b"\r\n")


@functools.lru_cache(maxsize=16)
def _sender(sender: str) -> tuple[bytes, str]:
    """The From header and the envelope address of a sender (a setting: the same for every message)."""
    name, address = parseaddr(sender)
    return _fold("From", formataddr((header_safe(name), address), charset="utf-8")), address


def build_message(
    *,
    sender: str,
    recipient_name: str,
    recipient_address: str,
    subject: str,
    text: str,
    html: str,
    language: str,
    message_id: str,
    date: datetime,
    extra_headers: dict[str, str],
) -> OutgoingMail:
    """A multipart/alternative (text + HTML) message to exactly one recipient."""
    from_header, sender_address = _sender(sender)
    boundary = "=_cs_" + secrets.token_hex(12)
    headers = [
        from_header,
        _fold("To", formataddr((header_safe(recipient_name), recipient_address), charset="utf-8")),
        _fold("Subject", header_safe(subject, limit=250)),
        _fold("Date", format_datetime(date)),
        _fold("Message-ID", f"<{message_id}>"),
        _fold("Content-Language", language),
        b"MIME-Version: 1.0\r\n",
    ]
    for name, value in extra_headers.items():
        headers.append(_fold(name, header_safe(value)))
    headers.append(f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n'.encode("ascii"))
    marker = f"--{boundary}\r\n".encode("ascii")
    data = b"".join(
        [
            *headers,
            b"\r\n",
            marker,
            _body(text, "text/plain"),
            marker,
            _body(html, "text/html"),
            f"--{boundary}--\r\n".encode("ascii"),
        ]
    )
    # Headers, base64 lines and boundaries never start with a dot; should one ever, it is stuffed here.
    data = data.replace(b"\n.", b"\n..")
    return OutgoingMail(sender=sender_address, recipient=recipient_address, data=data, message_id=message_id)
