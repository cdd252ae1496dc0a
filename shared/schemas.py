"""JSON Schemas of every event type, checked into ``schemas/`` (one file per type).

    python -m shared.schemas --write    # regenerate after changing a contract model
    python -m shared.schemas            # exit 1 if the files differ from the models

Each schema describes the structured-mode CloudEvent (envelope and ``data``); in binary mode the
``data`` part is the record value and the attributes are ``ce_*`` headers.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shared.envelope import typed_envelope, with_string_rules
from shared.mail.mailer import FAILED_TYPE, SENT_TYPE, SUPPRESSED_TYPE, NotificationOutcome, NotificationSuppressed
from shared.suppressions import SUPPRESSION_TYPES

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = ROOT / "schemas"


def contract_types() -> dict[str, type[BaseModel]]:
    """Every event type of the contract and its ``data`` model."""
    found: dict[str, type[BaseModel]] = {SENT_TYPE: NotificationOutcome, FAILED_TYPE: NotificationOutcome,
                                         SUPPRESSED_TYPE: NotificationSuppressed, **SUPPRESSION_TYPES}
    for folder in sorted((ROOT / "services").iterdir()):
        if not (folder / "contracts.py").is_file():
            continue
        module = importlib.import_module(f"services.{folder.name}.contracts")
        found.update(getattr(module, "INPUT_TYPES", {}))
        found.update(getattr(module, "OUTPUT_TYPES", {}))
    return found


def event_schema(event_type: str, model: type[BaseModel]) -> dict[str, Any]:
    schema = with_string_rules(typed_envelope(event_type, model).model_json_schema())
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://customersource.example/schemas/{event_type}.json"
    schema["title"] = event_type
    return schema


def rendered() -> dict[str, str]:
    return {
        f"{event_type}.json": json.dumps(event_schema(event_type, model), indent=2, ensure_ascii=False) + "\n"
        for event_type, model in sorted(contract_types().items())
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite schemas/ from the models")
    args = parser.parse_args()
    wanted = rendered()
    if args.write:
        SCHEMAS.mkdir(exist_ok=True)
        for stale in set(p.name for p in SCHEMAS.glob("*.json")) - set(wanted):
            (SCHEMAS / stale).unlink()
        for name, text in wanted.items():
            (SCHEMAS / name).write_text(text)
        print(f"wrote {len(wanted)} schemas to {SCHEMAS.relative_to(ROOT)}/")
        return 0
    drift = [n for n, t in wanted.items() if not (SCHEMAS / n).is_file() or (SCHEMAS / n).read_text() != t]
    drift += [p.name + " (no model)" for p in SCHEMAS.glob("*.json") if p.name not in wanted]
    print("\n".join(drift) or "schemas match the models")
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())
