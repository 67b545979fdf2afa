"""Reading /metrics in tests: the exposition parsed by prometheus-client, one sample's value
looked up by its name and labels (values are floats, label order is the library's)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the sample `name` with exactly these labels in the exposition `text`
    (`name` as exposed: `x_total`, `x_bucket` with `le=...`); None when there is none."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == labels:
                return float(found.value)
    return None
