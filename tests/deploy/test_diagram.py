"""docs/diagram.py draws the architecture; docs/architecture.md explains it."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .manifests import ROOT

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_diagram_renders(tmp_path: Path) -> None:
    if shutil.which("dot") is None:
        pytest.skip("Graphviz `dot` is missing: run `make deploy-tools` (installs Debian graphviz)")
    if importlib.util.find_spec("diagrams") is None:
        pytest.skip("the `diagrams` package is missing: run `make deploy-tools`")
    out = tmp_path / "architecture"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "diagram.py"), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    png = out.with_suffix(".png")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 50_000, "a diagram with every component is not a tiny image"


def test_committed_diagram_is_a_png() -> None:
    assert (ROOT / "docs" / "architecture.png").read_bytes().startswith(PNG_MAGIC)


def test_architecture_doc_embeds_both_diagrams() -> None:
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "architecture.png" in text
    assert "```mermaid" in text
    assert "sequenceDiagram" in text
    for failure_path in ("retry", "permanent", "crash", "sweeper", "expir"):
        assert failure_path in text.lower(), failure_path
