"""The mail pipeline: plan (what to send to whom) -> render (Jinja2 + Babel catalogs) -> deliver (SMTP)."""

from shared.mail.message import OutgoingMail, build_message, header_safe, usable_address
from shared.mail.plan import Notification
from shared.mail.render import RenderedMail, Renderer, negotiate_language

__all__ = [
    "Notification",
    "OutgoingMail",
    "RenderedMail",
    "Renderer",
    "build_message",
    "header_safe",
    "negotiate_language",
    "usable_address",
]
