"""The KRaft cluster id the test harness formats Apache Kafka's log directory with."""

from __future__ import annotations

import base64
import uuid

from ops.broker import cluster_id


def test_a_cluster_id_is_a_uuid_in_url_safe_base64() -> None:
    for _ in range(200):
        value = cluster_id()
        assert len(value) == 22 and not value.startswith("-")
        assert len(base64.urlsafe_b64decode(value + "==")) == 16


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """kafka-storage reads "-t -abc" as a missing argument: such an id once failed a whole CI run."""
    dashed = uuid.UUID(bytes=base64.urlsafe_b64decode("-SoMmg5TS7KD-IsUDZeLHA=="))
    drawn = iter([dashed, dashed, uuid.UUID(int=1)])
    assert cluster_id(lambda: next(drawn)) == base64.urlsafe_b64encode(uuid.UUID(int=1).bytes).rstrip(b"=").decode()
