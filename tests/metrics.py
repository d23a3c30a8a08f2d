"""Reading a gateway's /metrics in tests: samples matched on the labels a test names (the others
summed over), so a test about a model's calls does not depend on every label a metric has."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import httpx
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, Mapping[str, str], float]


def parse(text: str) -> list[Sample]:
    return [(s.name, s.labels, s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def scrape(url: str, headers: Mapping[str, str] | None = None) -> list[Sample]:
    return parse(httpx.get(f"{url}/metrics", timeout=10, headers=dict(headers or {})).text)


def value(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (0 when none)."""
    return sum(v for n, found, v in samples
               if n == name and all(found.get(k) == want for k, want in labels.items()))
