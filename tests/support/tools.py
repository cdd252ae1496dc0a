"""Command-line tools the deployment tests run, fetched on first use and cached like the Kafka jars
(``ops.broker.cached``): kustomize from the Go module proxy (built with the machine's Go)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ops.broker import cached

KUSTOMIZE_VERSION = "v5.8.1"


def kustomize() -> Path:
    """The kustomize binary (``go install sigs.k8s.io/kustomize/kustomize/v5@VERSION`` once, then cached)."""

    def fill(staging: Path) -> None:
        go = shutil.which("go")
        if go is None:
            raise RuntimeError("kustomize is built with Go, which is not on PATH (TESTING.md: Go is on the machine)")
        result = subprocess.run(
            [go, "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
            env={**os.environ, "GOBIN": str(staging), "GOFLAGS": "-mod=mod"},
            capture_output=True, text=True, timeout=900,
        )
        if result.returncode != 0:
            raise RuntimeError(f"go install kustomize failed:\n{result.stderr[-2000:]}")

    return cached("kustomize", KUSTOMIZE_VERSION, fill) / "kustomize"


def kustomize_build(folder: Path) -> str:
    result = subprocess.run([str(kustomize()), "build", str(folder)], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise AssertionError(f"kustomize build {folder} failed:\n{result.stderr}")
    return result.stdout
