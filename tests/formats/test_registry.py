"""Every format has a spec, and the heavy libraries stay out of processes that do not
write their formats."""

from __future__ import annotations

import subprocess
import sys

from exporter.formats import spec_for
from exporter.models import ExportFormat


def test_every_format_has_a_spec_with_its_extension_and_content_type() -> None:
    for fmt in ExportFormat:
        spec = spec_for(fmt)
        assert spec.fmt is fmt and spec.extension == fmt.value
        assert spec.content_type == fmt.content_type
        assert (spec.open_writer is not None) == (spec.render == "typed")
        assert (spec.open_stream is not None) == (spec.render == "xlsx")


def test_the_api_and_the_worker_start_without_pyarrow() -> None:
    code = (
        "import sys, exporter.app, exporter.jobs.worker, exporter.jobs.produce;"
        "print(sorted(m for m in ('pyarrow',) if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    assert out.strip() == "[]"
