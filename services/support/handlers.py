"""Handlers of the newsgroup events and the escalation job."""

from __future__ import annotations

from collections.abc import Mapping
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
from shared.app import Service
from shared.consumer import Effects, EventRouter, all_of
from shared.envelope import Event
from shared.ids import deterministic_id
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
        )
        self.router.handles(POST_CREATED, PostCreated)(self.on_post_created)
        self.router.handles(POST_ANSWERED, PostAnswered)(self.on_post_answered)
        self.router.handles(POST_UNANSWERED, PostUnanswered)(self.on_post_unanswered)

    @staticmethod
    async def _load(effects: Effects, post_id: str) -> Post | None:
        async with effects.store.connect() as connection:
            return await state.load_post(connection, post_id)

    async def on_post_created(self, event: Event[PostCreated], effects: Effects) -> None:
        """An eligible post gets its due-time: 48 business hours after posted_at. A post read when already
        overdue escalates once this member has caught up with the partition (an answer further on in the
        backlog can still cancel it)."""
        current = await self._load(effects, event.data.post_id)
        await self._act(current, domain.on_created(current, event.data), effects)

    async def on_post_answered(self, event: Event[PostAnswered], effects: Effects) -> None:
        """An answer before the due time cancels the escalation."""
        current = await self._load(effects, event.data.post_id)
        await self._act(current, domain.on_answered(current, event.data), effects)

    async def on_post_unanswered(self, event: Event[PostUnanswered], effects: Effects) -> None:
        """Escalates at once if eligible and neither escalated nor answered."""
        current = await self._load(effects, event.data.post_id)
        await self._act(current, domain.on_unanswered(current, event.data), effects)

    async def _act(self, current: Post | None, decision: Decision, effects: Effects) -> None:
        if decision.ignored:
            effects.ignored(decision.ignored)
        post = decision.post
        expected = current.state if current is not None else None
        escalated = False
        if post is not None and decision.escalate:
            if post != current:  # first seen in this event: stored before it is claimed
                async with effects.store.transaction() as connection:
                    await state.save_post(connection, post, expected=expected, now=effects.now)
            escalated = await self._escalate(post, "post_unanswered", effects)
            if not escalated:
                decision = replace(decision, cancel=False)  # the claim's holder (a timer) still needs its job
        async with effects.finish() as connection:
            if post is not None and not decision.escalate:
                await state.save_post(connection, post, expected=expected, now=effects.now)
            if escalated and post is not None:
                await state.mark_escalated(connection, post.post_id, effects.now)
            if decision.cancel and post is not None:
                await effects.cancel(connection, escalation_job_id(post.post_id))
            if decision.schedule and post is not None and post.due_at is not None:
                await effects.schedule(connection, job_id=escalation_job_id(post.post_id), kind=ESCALATION_JOB,
                                       aggregate_id=post.post_id, due_at=post.due_at,
                                       payload={"post_id": post.post_id, "partition": effects.partition})

    async def run_escalation(self, job: Job, effects: Effects) -> None:
        """The due time has come and this replica has caught up with the post's partition (the job's gate):
        escalate, unless the post was answered meanwhile."""
        post = await self._load(effects, job.payload["post_id"])
        if post is None or post.state not in (State.WAITING, State.ESCALATING):
            effects.ignored("the post was answered or escalated meanwhile")
            return
        if await self._escalate(post, "timer", effects):
            async with effects.finish() as connection:
                await state.mark_escalated(connection, post.post_id, effects.now)

    async def _escalate(self, post: Post, trigger: Literal["timer", "post_unanswered"], effects: Effects) -> bool:
        """Claim the post's one escalation, then publish it and send both e-mails (all with ids derived from
        the cause, so a re-run after a crash repeats nothing). False if the post was not ours to escalate."""
        claim = {"source": effects.event.source, "id": effects.event.id, "trigger": trigger}
        async with effects.store.transaction() as connection:
            escalated_at = await state.claim_escalation(connection, post.post_id, claim, effects.now)
        if escalated_at is None:
            effects.ignored("another escalation of this post came first")
            return False
        assert post.local_site is not None and post.author is not None
        assert post.posted_at is not None and post.due_at is not None
        routing = self.routes.get(post.local_site, self.escalation_email)
        raised = EscalationRaised(
            post=EscalatedPost(post_id=post.post_id, newsgroup=post.newsgroup, title=post.title, url=post.url,
                               product=post.product, posted_at=post.posted_at),
            account=EscalatedAccount(account_id=post.account_id, account_name=post.account_name,
                                     country=post.country, local_site=post.local_site.value, plans=list(post.plans)),
            reason=post.reason, trigger=trigger, due_at=post.due_at, escalated_at=escalated_at,
            time_zone=post.time_zone, routing=Routing(local_site=post.local_site.value, email=routing),
        )
        context = self._context(post, trigger, escalated_at)
        team = Person(email=routing, name=SUPPORT_TEAM_NAME, locale=SITE_LANGUAGE[post.local_site])
        await all_of(
            effects.publish(topic=OUTPUT_TOPIC, key=post.post_id, event_type=ESCALATION_RAISED, data=raised,
                            side_effect="escalation", recipient=post.post_id),
            effects.mail(Notification(template=domain.SUPPORT_TEMPLATE, recipient=team, local_site=post.local_site,
                                      aggregate_id=post.post_id, context=context)),
            effects.mail(Notification(template=domain.AUTHOR_TEMPLATE, recipient=post.author,
                                      local_site=post.local_site, aggregate_id=post.post_id, context=context)),
        )
        return True

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


def escalation_gate(service: Service, payload: Mapping[str, Any]) -> bool:
    """An escalation runs only on the replica that owns the post's partition, once it has caught up with it:
    an answer further on in a backlog is read first."""
    partition = payload.get("partition")
    return partition is None or service.is_caught_up(int(partition))
