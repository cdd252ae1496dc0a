"""Handlers of the newsgroup events and the escalation job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any, Literal

from services.support import domain, state
from services.support.contracts import (
    ESCALATION_RAISED,
    OUTPUT_TOPIC,
    POST_ANSWERED,
    POST_CREATED,
    POST_UNANSWERED,
    TOPIC,
    EscalatedAccount,
    EscalatedPost,
    EscalationRaised,
    PostAnswered,
    PostCreated,
    PostUnanswered,
    Routing,
)
from services.support.domain import Decision, Post, State
from shared.envelope import Event
from shared.handling import Context, EventRouter, Output, Plan, Preload, Write
from shared.ids import deterministic_id
from shared.lag import CaughtUp
from shared.mail.plan import Notification
from shared.scheduler import Job
from shared.shapes import SITE_LANGUAGE, LocalSite, Person

ESCALATION_JOB = "escalation"
SUPPORT_TEAM_NAME = "Microsoft Dynamics Support"


def escalation_job_id(post_id: str) -> str:
    return deterministic_id("support-escalation", post_id)


class SupportHandlers:
    """The handlers, bound to the escalation routing."""

    def __init__(self, *, escalation_email: str, routes: Mapping[LocalSite, str]) -> None:
        self.escalation_email = escalation_email
        self.routes = dict(routes)
        self.router = EventRouter(
            service="support",
            topic=TOPIC,
            key_field="post_id",
            description="Managed newsgroup posts: created, answered, and reported unanswered by an upstream "
            "tracker. Key: post_id.",
            # Every handler loads the event's post: read for a whole batch at once.
            preload=Preload(read=state.load_post, args=lambda event: (event.data.post_id,), read_many=state.load_posts),
        )
        self.router.handles(POST_CREATED, PostCreated)(self.on_post_created)
        self.router.handles(POST_ANSWERED, PostAnswered)(self.on_post_answered)
        self.router.handles(POST_UNANSWERED, PostUnanswered)(self.on_post_unanswered)

    async def on_post_created(self, event: Event[PostCreated], context: Context) -> Plan:
        """An eligible post gets its due-time: 48 business hours after posted_at. A post read when already
        overdue escalates once this member has caught up with the partition (an answer further on in the
        backlog can still cancel it)."""
        current = await context.read(state.load_post, event.data.post_id)
        return await self._plan(current, domain.on_created(current, event.data), context)

    async def on_post_answered(self, event: Event[PostAnswered], context: Context) -> Plan:
        """An answer before the due time cancels the escalation."""
        current = await context.read(state.load_post, event.data.post_id)
        return await self._plan(current, domain.on_answered(current, event.data), context)

    async def on_post_unanswered(self, event: Event[PostUnanswered], context: Context) -> Plan:
        """Escalates at once if eligible and neither escalated nor answered."""
        current = await context.read(state.load_post, event.data.post_id)
        return await self._plan(current, domain.on_unanswered(current, event.data), context)

    async def _plan(self, current: Post | None, decision: Decision, context: Context) -> Plan:
        """An escalation: claimed (with the post, if first seen in this event) before the e-mails and the
        escalation event, then the post marked escalated and its timer cancelled. Otherwise the post's new
        state and its timer, scheduled or cancelled, in one transaction."""
        post = decision.post
        if post is None:
            return Plan(ignored=decision.ignored)
        if not decision.escalate:
            expected = current.state if current is not None else None
            return Plan(after=[state.save_post(post, expected=expected, now=context.now),
                               *self._timer(post, decision, context)], ignored=decision.ignored)
        claim = _claim(context, "post_unanswered")
        if post.state is State.ESCALATING and post.escalation != claim:
            # Its holder (a timer) still needs its job: not cancelled.
            return Plan(after=self._timer(post, replace(decision, cancel=False), context),
                        ignored="another escalation of this post came first")
        return self._claimed(post, current, claim, "post_unanswered", context,
                             then_also=self._timer(post, decision, context))

    @staticmethod
    def _timer(post: Post, decision: Decision, context: Context) -> list[Write]:
        changes = []
        if decision.cancel:
            changes.append(context.cancel(escalation_job_id(post.post_id)))
        if decision.schedule and post.due_at is not None:
            changes.append(context.schedule(job_id=escalation_job_id(post.post_id), kind=ESCALATION_JOB,
                                            aggregate_id=post.post_id, due_at=post.due_at,
                                            payload={"post_id": post.post_id, "partition": context.partition}))
        return changes

    async def run_escalation(self, job: Job, context: Context) -> Plan:
        """The due time has come and this replica has caught up with the post's partition as it was then (the
        job's gate): escalate, unless the post was answered or escalated meanwhile."""
        post = await context.read(state.load_post, job.payload["post_id"])
        claim = _claim(context, "timer")
        if post is None or post.state not in (State.WAITING, State.ESCALATING):
            return Plan(ignored="the post was answered or escalated meanwhile")
        if post.state is State.ESCALATING and post.escalation != claim:
            return Plan(ignored="another escalation of this post came first")
        return self._claimed(post, post, claim, "timer", context)

    def _claimed(self, post: Post, loaded: Post | None, claim: dict[str, str],
                 trigger: Literal["timer", "post_unanswered"], context: Context,
                 then_also: Sequence[Write] = ()) -> Plan:
        """The escalation of ``post`` (``loaded``: as it was stored): resumed if this cause claimed it before a
        crash or a failure, at the time it claimed it; else claimed now, the waiting post stored already
        claimed if first seen in this event. If another cause claims it first, the claim fails and this cause
        is processed again, and then finds it taken."""
        if post.state is State.ESCALATING:
            return self._escalation(post, trigger, context, claim=None, then_also=then_also)
        claimed = replace(post, state=State.ESCALATING, escalation=claim, escalated_at=context.now)
        if post != loaded:
            write = state.save_post(claimed, expected=loaded.state if loaded is not None else None, now=context.now)
        else:
            write = state.claim_escalation(post.post_id, claim, context.now)
        return self._escalation(claimed, trigger, context, claim=write, then_also=then_also)

    def _escalation(self, post: Post, trigger: Literal["timer", "post_unanswered"], context: Context, *,
                    claim: Write | None, then_also: Sequence[Write] = ()) -> Plan:
        """The escalation of a claimed post: its ``claim`` committed first (None: committed by an earlier
        attempt), then both e-mails and the escalation event (all with ids derived from the cause, so a re-run
        after a crash repeats nothing), then the post marked escalated."""
        assert post.local_site is not None and post.author is not None and post.escalated_at is not None
        assert post.posted_at is not None and post.due_at is not None
        escalated_at = post.escalated_at
        routing = self.routes.get(post.local_site, self.escalation_email)
        raised = EscalationRaised(
            post=EscalatedPost(post_id=post.post_id, newsgroup=post.newsgroup, title=post.title, url=post.url,
                               product=post.product, posted_at=post.posted_at),
            account=EscalatedAccount(account_id=post.account_id, account_name=post.account_name,
                                     country=post.country, local_site=post.local_site.value, plans=list(post.plans)),
            reason=post.reason, trigger=trigger, due_at=post.due_at, escalated_at=escalated_at,
            time_zone=post.time_zone, routing=Routing(local_site=post.local_site.value, email=routing),
        )
        mail_context = self._context(post, trigger, escalated_at)
        team = Person(email=routing, name=SUPPORT_TEAM_NAME, locale=SITE_LANGUAGE[post.local_site])
        return Plan(
            before=[claim] if claim is not None else [],
            mails=[Notification(template=domain.SUPPORT_TEMPLATE, recipient=team, local_site=post.local_site,
                                aggregate_id=post.post_id, context=mail_context),
                   Notification(template=domain.AUTHOR_TEMPLATE, recipient=post.author, local_site=post.local_site,
                                aggregate_id=post.post_id, context=mail_context)],
            events=[Output(topic=OUTPUT_TOPIC, key=post.post_id, event_type=ESCALATION_RAISED, data=raised,
                           side_effect="escalation", recipient=post.post_id)],
            after=[state.mark_escalated(post.post_id, context.now), *then_also],
        )

    @staticmethod
    def _context(post: Post, trigger: str, escalated_at: datetime) -> dict[str, Any]:
        assert post.posted_at is not None
        return {
            "post_id": post.post_id, "newsgroup": post.newsgroup, "title": post.title, "url": post.url,
            "account_id": post.account_id, "account_name": post.account_name, "product": post.product,
            "plans": list(post.plans), "country": post.country, "local_site": post.local_site.value
            if post.local_site else "", "author_name": post.author.name if post.author else "",
            "posted_at": post.posted_at, "due_at": post.due_at, "escalated_at": escalated_at,
            "waited": escalated_at - post.posted_at, "time_zone": post.time_zone, "reason": post.reason,
            "trigger": trigger,
        }


def _claim(context: Context, trigger: str) -> dict[str, str]:
    return {"source": context.cause.source, "id": context.cause.id, "trigger": trigger}


def escalation_gate(caught_up: CaughtUp, job_id: str, payload: Mapping[str, Any]) -> bool:
    """An escalation runs only on the replica that owns the post's partition, once it has caught up with the
    partition as it was when the escalation was due: an answer further on in a backlog is read first, and
    posts arriving all the time do not hold it back."""
    partition = payload.get("partition")
    return partition is None or caught_up.reached(int(partition), job_id)
