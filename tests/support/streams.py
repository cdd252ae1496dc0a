"""Streams of events for the fault tests, one per sending service, and the count of their e-mails.

A fault test runs for the services ``fault_services()`` names: invitations in the test run, all four in
``make faults`` (``FAULT_SERVICES=all``) or those listed (``FAULT_SERVICES=expiry,support``)."""

from __future__ import annotations

import collections
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from services.expiry.contracts import NEARING_EXPIRY
from services.invitations.contracts import ADDED
from services.permissions.contracts import REQUESTED
from services.support.contracts import POST_UNANSWERED
from tests.support.kafka import cloudevent
from tests.support.samples import permission_requested, person, plan_nearing_expiry, post_created, professional_added
from tests.support.smtp import SmtpServer
from tests.support.waiting import wait_until

Event = tuple[str, dict[str, Any]]
"""A record's key and its CloudEvent."""


@dataclass(frozen=True)
class Stream:
    """How one service is fed: its input topic, one event (key, CloudEvent), and whom each event's e-mails go to
    (from the event's data)."""

    topic: str
    event: Callable[[], Event]
    recipients: Callable[[dict[str, Any]], list[str]]

    def events(self, count: int) -> list[Event]:
        return [self.event() for _ in range(count)]

    @property
    def mails_per_event(self) -> int:
        return len(self.recipients(self.event()[1]["data"]))

    def mails(self, events: Sequence[Event]) -> set[tuple[str, str]]:
        """The e-mails these events make: (event id, recipient), each to arrive once."""
        return {(event["id"], recipient.lower()) for _, event in events for recipient in self.recipients(event["data"])}


def _expiry_event() -> Event:
    data = plan_nearing_expiry(date.today() + timedelta(days=10), contacts=[person("contact")])
    del data["partner"]  # no digest job: one reminder per event
    return data["plan_id"], cloudevent(NEARING_EXPIRY, data)


def _permissions_event() -> Event:
    data = permission_requested(customer_admins=[person("admin")])
    return data["request_id"], cloudevent(REQUESTED, data)


def _support_event() -> Event:
    data = post_created(datetime.now(UTC) - timedelta(days=10))  # escalation, team e-mail and author notice
    return data["post_id"], cloudevent(POST_UNANSWERED, data)


def _invitations_event() -> Event:
    data = professional_added()
    return data["professional_id"], cloudevent(ADDED, data)


SUPPORT_TEAM = "support@customersource.example"
"""Where the support service sends escalations in these tests (its SUPPORT_ESCALATION_EMAIL, no route by site)."""

STREAMS = {
    "invitations": Stream("customersource.professionals", _invitations_event, lambda data: [data["email"]]),
    "expiry": Stream("customersource.service-plans", _expiry_event,
                     lambda data: [contact["email"] for contact in data["contacts"]]),
    "permissions": Stream("customersource.partner-permissions", _permissions_event,
                          lambda data: [admin["email"] for admin in data["customer_admins"]]),
    "support": Stream("customersource.newsgroups", _support_event,
                      lambda data: [SUPPORT_TEAM, data["author"]["email"]]),
}


def fault_services() -> list[str]:
    """The services a fault test runs for (``FAULT_SERVICES``: ``all``, or names separated by commas)."""
    wanted = os.environ.get("FAULT_SERVICES", "invitations")
    names = sorted(STREAMS) if wanted == "all" else [name.strip() for name in wanted.split(",") if name.strip()]
    unknown = set(names) - set(STREAMS)
    if unknown or not names:
        raise ValueError(f"FAULT_SERVICES={wanted!r}: 'all' or some of {', '.join(sorted(STREAMS))}")
    return names


Mails = collections.Counter[tuple[str, str]]
"""How many times each e-mail arrived: (event id, recipient)."""


def mails_of(events: Sequence[Event], servers: Sequence[SmtpServer]) -> Callable[[], Mails]:
    """What the SMTP servers (the list as it is at each call: a test may add one) have received for these events.
    Each message is read once, however often the test asks: a test that counts thousands of them every few
    milliseconds would otherwise take the CPU of its process, where the SMTP servers run."""
    ids = {event["id"] for _, event in events}
    counted = Mails()
    seen: dict[SmtpServer, int] = {}  # per server: how many of its messages are counted

    def delivered() -> Mails:
        for server in servers:
            arrived = server.messages[seen.get(server, 0):]
            seen[server] = seen.get(server, 0) + len(arrived)
            for received in arrived:
                event_id = received.event_id
                if event_id is not None and event_id in ids:
                    counted[event_id, received.rcpt_tos[0].lower()] += 1
        return counted.copy()

    return delivered


def reached(delivered: Callable[[], Mails], count: int) -> bool:
    """Whether ``count`` e-mails have arrived, repeats included."""
    return sum(delivered().values()) >= count


async def all_arrived(delivered: Callable[[], Mails], wanted: set[tuple[str, str]], timeout: float, *,
                      log_tail: Callable[[], str] = lambda: "") -> Mails:
    """Once every e-mail of ``wanted`` has arrived, what has (checked: each to whom its event says)."""
    await wait_until(lambda: len(delivered()) >= len(wanted), timeout,
                     state=lambda: f"{len(delivered())} of {len(wanted)} e-mails; {log_tail()}")
    at_end = delivered()
    assert set(at_end) == wanted, "an e-mail to an address its event does not carry"
    return at_end


@dataclass(frozen=True)
class Kills:
    """What SIGKILLs during a stream did to its e-mails, all arrived: each kill's duplicates are the e-mails that
    had arrived before it and arrived again before the next kill (or the end)."""

    delivered: int
    duplicates: int
    per_kill: list[int]
    bound: int
    """The most e-mails one kill may repeat: those in flight."""

    @classmethod
    def of(cls, at_kills: Sequence[Mails], at_end: Mails, bound: int) -> Kills:
        """From what had arrived at each kill (how many times each e-mail) and at the end."""
        per_kill = [sum(1 for mail, n in before.items() if later[mail] > n)
                    for before, later in zip(at_kills, [*at_kills[1:], at_end], strict=True)]
        return cls(delivered=len(at_end), duplicates=sum(n - 1 for n in at_end.values()), per_kill=per_kill,
                   bound=bound)

    def summary(self) -> str:
        return (f"{self.delivered} delivered, {self.duplicates} duplicate(s); per kill mean "
                f"{statistics.mean(self.per_kill):.1f}, max {max(self.per_kill)} (bound: {self.bound} in flight)")

    def within_bound(self) -> bool:
        return max(self.per_kill) <= self.bound and self.duplicates <= self.bound * len(self.per_kill)
