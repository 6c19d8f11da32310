"""Reading a ``/metrics`` scrape the way Prometheus does, with prometheus_client's parser.

Tests name a series as Prometheus writes it, ``name{label="value",...}``, in
any label order; the value comes from the parsed scrape, not from matching text.
"""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["sample_value"]

_SERIES = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def sample_value(scrape: str, series: str) -> float:
    """The value of ``series`` in the scrape; 0 when it is absent (a counter not yet counted)."""
    match = _SERIES.match(series)
    assert match, f"not a series: {series!r}"
    name, labels = match["name"], dict(_LABEL.findall(match["labels"] or ""))
    for family in text_string_to_metric_families(scrape):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0
