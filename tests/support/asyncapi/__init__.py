"""The official AsyncAPI parser (npm's @asyncapi/parser), fetched with the machine's npm on first use into
the cache beside the Apache Kafka jars, and run with node."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ops.broker import cached

PARSER_VERSION = "3.6.6"
SCRIPT = Path(__file__).parent / "validate.mjs"


def fetch_parser(version: str = PARSER_VERSION) -> Path:
    """The folder holding node_modules/@asyncapi/parser (installed once)."""

    def fill(folder: Path) -> None:
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("no npm on PATH to fetch @asyncapi/parser (the AsyncAPI documents are checked with it)")
        (folder / "package.json").write_text(json.dumps({"private": True, "type": "module"}))
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--silent", f"@asyncapi/parser@{version}"],
                                cwd=folder, capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"npm could not install @asyncapi/parser {version}:\n{result.stdout[-2000:]}"
                               f"{result.stderr[-2000:]}")

    return cached("asyncapi-parser", version, fill)


def diagnostics(files: list[Path]) -> list[dict[str, Any]]:
    """What the official parser says of each document (errors, warnings, hints)."""
    folder = fetch_parser()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("no node on PATH to run @asyncapi/parser")
    shutil.copy(SCRIPT, folder / SCRIPT.name)  # the script as this checkout has it
    result = subprocess.run([node, str(folder / SCRIPT.name), *map(str, files)], cwd=folder, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"the AsyncAPI parser failed:\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
