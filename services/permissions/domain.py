"""Permission request decisions. Pure: the stored request, the event and the time come in; a decision
comes out.

States: pending -> approved | denied; approved -> removed. An event asking for the state the request
is already in is ignored (and counted); any other transition is refused: dead-lettered
``unknown_aggregate`` for a request never seen (or named with another account or partner), and
``invalid_transition`` otherwise (approve after deny, remove while pending, anything after removal).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum

from services.permissions.contracts import PermissionRequested
from shared.envelope import DeadLetter
from shared.shapes import Person

REQUESTED_TEMPLATE = "permission_requested"
REMINDER_TEMPLATE = "permission_reminder"
CONFIRMATION_TEMPLATE = "permission_confirmation"  # to the administrators: approved, removed
DECISION_TEMPLATE = "permission_decision"  # to the partner: approved, denied, removed

REMINDER_GRACE = timedelta(days=1)
"""A request read after its reminder was due gets it late, unless later than this: then never."""


class State(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    REMOVED = "removed"


ALLOWED: frozenset[tuple[State | None, State]] = frozenset({
    (None, State.PENDING), (State.PENDING, State.APPROVED), (State.PENDING, State.DENIED),
    (State.APPROVED, State.REMOVED),
})
VERBS = {State.PENDING: "a request", State.APPROVED: "an approval", State.DENIED: "a refusal",
         State.REMOVED: "a removal"}


@dataclass(frozen=True, slots=True)
class Request:
    """What the service keeps of a request."""

    request_id: str
    account_id: str
    account_name: str
    partner_id: str
    partner: Person
    admins: tuple[Person, ...]
    capabilities: tuple[str, ...]
    requested_at: datetime
    state: State = State.PENDING
    decided_at: datetime | None = None
    decided_by: Person | None = None
    cause: str = ""  # the event that put the request in its state ("source id")
    reminded_at: datetime | None = None  # when its reminder was claimed (it goes out once)


@dataclass(frozen=True, slots=True)
class Outcome:
    request: Request | None = None  # the state to keep (saved before any e-mail goes out)
    expected: State | None = None  # the state it must still be in when saved (None: a new request)
    resumed: bool = False  # this event's change is already saved (a re-run after a crash): only the e-mails
    ignored: str | None = None
    notify_admins: str | None = None  # template for each administrator
    notify_partner: bool = False
    schedule_reminder: datetime | None = None
    cancel_reminder: bool = False


def from_event(data: PermissionRequested, cause: str) -> Request:
    partner = Person(email=data.partner.email, name=data.partner.name, locale=data.partner.locale)
    admins: dict[str, Person] = {}
    for admin in data.customer_admins:  # one e-mail per address, however it is written
        admins.setdefault(admin.email.strip().lower(), admin)
    return Request(
        request_id=data.request_id, account_id=data.account_id, account_name=data.account_name,
        partner_id=data.partner.partner_id, partner=partner, admins=tuple(admins.values()),
        capabilities=tuple(c.value for c in data.capabilities), requested_at=data.requested_at, cause=cause,
    )


def _unknown(target: State, request_id: str) -> DeadLetter:
    return DeadLetter("unknown_aggregate", f"{VERBS[target]} for request {request_id!r}, which this service has "
                                           "never seen (a permission.requested must come first)")


def _check(current: Request | None, target: State, *, request_id: str, account_id: str, partner_id: str) -> None:
    """Refuse what is neither a transition of the contract nor a repeat of the current state."""
    if current is None:
        if target is State.PENDING:
            return
        raise _unknown(target, request_id)
    if (current.account_id, current.partner_id) != (account_id, partner_id):
        raise DeadLetter("unknown_aggregate", f"request {request_id!r} belongs to another account or partner "
                                              "than the one this event names")
    if current.state is not target and (current.state, target) not in ALLOWED:
        raise DeadLetter("invalid_transition", f"{VERBS[target]} for request {request_id!r}, which is "
                                               f"{current.state.value}: only pending -> approved or denied, and "
                                               "approved -> removed are allowed")


def _notices(target: State) -> tuple[str | None, bool]:
    """(the administrators' template, whether the partner is told) for a request reaching ``target``."""
    if target is State.PENDING:
        return REQUESTED_TEMPLATE, False
    return (CONFIRMATION_TEMPLATE if target in (State.APPROVED, State.REMOVED) else None), True


def on_requested(current: Request | None, data: PermissionRequested, *, cause: str, now: datetime,
                 reminder_after: timedelta) -> Outcome:
    _check(current, State.PENDING, request_id=data.request_id, account_id=data.account_id,
           partner_id=data.partner.partner_id)
    if current is not None:
        if current.cause == cause:
            return Outcome(request=current, resumed=True, notify_admins=REQUESTED_TEMPLATE)
        return Outcome(ignored=f"the request is already {current.state.value}")
    request = from_event(data, cause)
    due = data.requested_at + reminder_after
    return Outcome(request=request, notify_admins=REQUESTED_TEMPLATE,
                   schedule_reminder=due if now <= due + REMINDER_GRACE else None)


def on_decision(current: Request | None, target: State, *, request_id: str, account_id: str, partner_id: str,
                decided_by: Person, decided_at: datetime, cause: str) -> Outcome:
    if current is None:
        raise _unknown(target, request_id)
    _check(current, target, request_id=request_id, account_id=account_id, partner_id=partner_id)
    admins, partner = _notices(target)
    if current.state is target:
        if current.cause == cause:
            return Outcome(request=current, resumed=True, notify_admins=admins, notify_partner=partner)
        return Outcome(ignored=f"the request is already {target.value}")
    decided = replace(current, state=target, decided_at=decided_at, decided_by=decided_by, cause=cause)
    return Outcome(request=decided, expected=current.state, notify_admins=admins, notify_partner=partner,
                   cancel_reminder=current.state is State.PENDING)


def reminder_due(current: Request | None) -> bool:
    """The reminder goes out only while the request is still pending."""
    return current is not None and current.state is State.PENDING
