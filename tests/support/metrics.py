"""Samples of one metric from a Prometheus text exposition (a process's /metrics page, or
prometheus_client's own registry in unit tests)."""

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample


def samples(exposition: str, name: str) -> list[Sample]:
    return [sample for family in text_string_to_metric_families(exposition) for sample in family.samples
            if sample.name == name]
