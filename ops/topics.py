"""Create the contract's topics on a Kafka cluster (production topics are not created by the services).

    python -m ops.topics --bootstrap kafka:9092 [--partitions 12] [--replication 3]
    (KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE are read from the environment)
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from shared.kafka import client_options, create_missing_topics
from shared.settings import ServiceSettings

DLQ_MAX_MESSAGE_BYTES = 2 * 1_048_576 + 65_536
TOPICS_FILE = Path(__file__).resolve().parent.parent / "deploy" / "topics.json"


def contract_topics() -> tuple[list[str], int]:
    spec = json.loads(TOPICS_FILE.read_text())
    return [t["name"] for t in spec["topics"]], int(spec["partitions"])


def topic_configs(name: str) -> dict[str, str]:
    """A topic's configuration: its own from deploy/topics.json (the suppressions topic is compacted); dead
    letters carry the original record plus headers, so they get room above the input limit."""
    spec = {t["name"]: t for t in json.loads(TOPICS_FILE.read_text())["topics"]}
    configs = dict(spec.get(name, {}).get("config", {}))
    if name.endswith(".dlq"):
        configs["max.message.bytes"] = str(DLQ_MAX_MESSAGE_BYTES)
    return configs


async def create(bootstrap: str, partitions: int, replication: int) -> list[str]:
    settings = ServiceSettings(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap, SMTP_FROM="ops@localhost.localdomain",
        PORTAL_BASE_URL="https://ops.invalid", BUSINESS_CENTER_URL="https://ops.invalid",
        HELP_EMAIL="ops@localhost.localdomain",
    )  # the KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and KAFKA_SSL_CAFILE environment variables apply
    names, _ = contract_topics()
    return await create_missing_topics(client_options(settings), names, partitions=partitions,
                                       replication=replication, configs=topic_configs)


def main() -> None:
    _, default_partitions = contract_topics()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--partitions", type=int, default=default_partitions)
    parser.add_argument("--replication", type=int, default=3)
    args = parser.parse_args()
    created = asyncio.run(create(args.bootstrap, args.partitions, args.replication))
    print("created: " + (", ".join(created) if created else "nothing, all topics exist"))


if __name__ == "__main__":
    main()
