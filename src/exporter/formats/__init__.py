"""Export formats: one module per format behind one small interface (``base.FileFormat``).

=========  =====================================  ==========================================
format     how rows are produced                   formula injection
=========  =====================================  ==========================================
csv        PostgreSQL's COPY renders the CSV       a leading ``=+-@`` tab CR LF gets ``'``
csv.gz     the same CSV, gzipped as it streams     the same
jsonl      PostgreSQL renders one JSON object per  values exact: JSON is data for programs,
           row (``store/memberships.py``)          no spreadsheet evaluates it
parquet    COPY's typed rendering, read by pyarrow values exact and typed
           in blocks, one row group per block
xlsx       PostgreSQL renders one SpreadsheetML   every text is an inline string cell
           row per line, zipped as it streams     (``t="inlineStr"``), never a formula
=========  =====================================  ==========================================

``spec_for(fmt)`` is all ``jobs/produce.py`` needs. pyarrow is imported only when a parquet
export runs, so neither the API nor another export pays for it.
"""

from __future__ import annotations

from exporter.formats.base import FileFormat
from exporter.formats.registry import spec_for

__all__ = ["FileFormat", "spec_for"]
