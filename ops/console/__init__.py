"""The local operations console: the web page ``make run`` opens on 127.0.0.1.

It shows the mail catcher's inbox (each e-mail as the recipient sees it, with its text part, headers,
language and the event that caused it), the escalations raised, the dead letters with their reasons
(and the command that replays them), and per service its health, consumer lag per partition and
counters, read from the services' /metrics. It reads Kafka from the beginning without a consumer group
and keeps what it read in memory.
"""

from ops.console.app import Console

__all__ = ["Console"]
