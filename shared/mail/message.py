"""Building the RFC 5322 message.

Headers go through the standard library's proven encoders (``email.policy.SMTP.fold``,
``email.utils.formataddr``); the multipart body is assembled directly, which is several times
cheaper than ``EmailMessage`` and just as strict: every header value is made single-line first,
so no input string can add a header.
"""

from __future__ import annotations

import binascii
import functools
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.utils import format_datetime, formataddr, parseaddr
from typing import TYPE_CHECKING

from shared.settings import check_address

if TYPE_CHECKING:  # dkimpy is imported only where DKIM is configured
    from shared.mail.dkim import DkimSigner

_UNSAFE = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
# Bidirectional controls and marks: they can make a subject or a name read differently than it is.
_BIDI = re.compile(r"[\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SPACES = re.compile(r"\s{2,}")


def header_safe(value: str, *, limit: int = 200) -> str:
    """One line, no control or bidirectional characters, bounded length."""
    if (value.isascii() and value.isprintable() and len(value) <= limit and "  " not in value and "=?" not in value
            and value[:1] != " " and value[-1:] != " "):
        return value  # printable ASCII (no control character) already single-spaced: nothing to clean
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

    @property
    def size(self) -> int:
        """The message's size as RFC 1870 counts it (SMTP's SIZE): without the dots stuffing added, one at the
        start of each line that begins with one."""
        return len(self.data) - self.data.count(b"\n..")


def _fold(name: str, value: str) -> bytes:
    if value.isascii() and len(name) + len(value) < 996 and not _UNSAFE.search(value):
        # Plain ASCII on one line (RFC 5322 allows 998): the standard library would move a value
        # that does not fit in 78 columns to a continuation line, which some readers show with a
        # leading space.
        return f"{name}: {value}\r\n".encode("ascii")
    header = policy.SMTP.header_factory(name, value)
    folded: str = header.fold(policy=policy.SMTP)
    return folded.encode("ascii")


# The octets a 7bit body may carry (RFC 2045 2.7): printable ASCII, tab and line ends. Its lines must also be
# at most 998 octets long (RFC 5322 2.1.1).
_7BIT_OCTETS = bytes(range(0x20, 0x7F)) + b"\t\n"
_BASE64_LINE = 76  # characters of base64 per line (RFC 2045 6.8)


def _body(content: str, content_type: str) -> bytes:
    """A text part: as it is (7bit) when it is plain ASCII in lines short enough, else in base64 (any other
    text, a lone carriage return included, arrives byte for byte). Either way it ends in CRLF, and the CRLF
    before the next boundary belongs to the boundary (RFC 2046 5.1.1)."""
    content = content.replace("\r\n", "\n")
    if content.isascii():  # known to the string, not computed
        ascii = content.encode("ascii")
        lines = ascii.split(b"\n")
        if not ascii.translate(None, _7BIT_OCTETS) and max(map(len, lines)) <= 998:
            payload, encoding = b"\r\n".join(lines), "7bit"
        else:
            payload, encoding = _base64(ascii.replace(b"\n", b"\r\n")), "base64"
    else:
        payload, encoding = _base64(content.replace("\n", "\r\n").encode("utf-8")), "base64"
    return (
        f"Content-Type: {content_type}; charset=\"utf-8\"\r\n"
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n"
    ).encode("ascii") + payload + b"\r\n"


def _base64(octets: bytes) -> bytes:
    """Base64 in lines of 76 characters, without the last line's end: encoded in one pass, then cut (the
    standard library's ``encodebytes`` encodes line by line)."""
    encoded = binascii.b2a_base64(octets, newline=False)
    return b"\r\n".join([encoded[i:i + _BASE64_LINE] for i in range(0, len(encoded), _BASE64_LINE)])


@functools.lru_cache(maxsize=4)
def _date(second: datetime) -> bytes:
    """The Date header of an instant, to the second (RFC 5322 3.3): the same for every e-mail of that second."""
    return _fold("Date", format_datetime(second))


@functools.lru_cache(maxsize=16)
def _sender(sender: str) -> tuple[bytes, str]:
    """The From header and the envelope address of a sender (a setting: the same for every message)."""
    name, address = parseaddr(sender)
    return _fold("From", formataddr((header_safe(name), address), charset="utf-8")), address


# Automated mail (RFC 3834): no vacation or out-of-office replies, from Exchange servers too.
_AUTOMATED = b"Auto-Submitted: auto-generated\r\nX-Auto-Response-Suppress: All\r\n"
_EXTRA_LIMIT = 900  # an extra header's value (a list's unsubscribe link, an event id) stays on one line


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
    envelope_sender: str | None = None,
    signer: DkimSigner | None = None,
) -> OutgoingMail:
    """A multipart/alternative (text + HTML) message to exactly one recipient, from ``envelope_sender`` in
    SMTP's MAIL FROM (by default the From address), signed by ``signer`` if given."""
    from_header, sender_address = _sender(sender)
    boundary = "=_cs_" + secrets.token_hex(12)
    headers = [
        from_header,
        _fold("To", formataddr((header_safe(recipient_name), recipient_address), charset="utf-8")),
        _fold("Subject", header_safe(subject, limit=250)),
        _date(date.replace(microsecond=0)),
        _fold("Message-ID", f"<{message_id}>"),
        _fold("Content-Language", language),
        b"MIME-Version: 1.0\r\n",
        _AUTOMATED,
    ]
    for name, value in extra_headers.items():
        headers.append(_fold(name, header_safe(value, limit=_EXTRA_LIMIT)))
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
    if signer is not None:
        names = [line.split(b":", 1)[0].decode("ascii") for line in b"".join(headers).split(b"\r\n")
                 if line and line[:1] not in b" \t"]  # the fields, not their folded continuations
        data = signer.signature(data, names) + data
    # A line of a 7bit part may start with a dot (headers, base64 lines and boundaries never do): stuffed here.
    data = data.replace(b"\n.", b"\n..")
    return OutgoingMail(sender=envelope_sender or sender_address, recipient=recipient_address, data=data,
                        message_id=message_id)
