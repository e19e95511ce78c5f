"""Run records as data: method descriptions, ``record.json``, and records of earlier releases.

Torch-free and free of method code: the sweep and the report read runs only through here
(``description`` for :class:`Description` and :class:`Signal`, ``record`` for a run folder,
``compat`` for folders written before ``record.json``).
"""

from dreg_dist.records.description import Catalog, Description, Signal
from dreg_dist.records.record import SCHEMA_VERSION, RunRecord, make_record, output_keys, read_record, write_record

BASELINE = "vanilla"
"""The method every other is compared against (reports, step-cost benchmarks)."""

__all__ = ["BASELINE", "SCHEMA_VERSION", "Catalog", "Description", "RunRecord", "Signal", "make_record", "output_keys",
           "read_record", "write_record"]
