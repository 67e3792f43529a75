"""Reading a gateway's metrics in tests: its ``/metrics`` page scraped in process and
parsed into samples, summed by label."""

from __future__ import annotations

from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Samples", "by_label", "parse", "scrape_wsgi", "total"]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape_wsgi(app: Any) -> Samples:
    """The samples a WSGI metrics app (``gate.metrics_app()``) serves, checked served."""
    status: list[str] = []
    body = b"".join(app({"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
                        lambda s, h: status.append(s)))
    assert status == ["200 OK"]
    return parse(body.decode())


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def by_label(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """`name`'s samples whose labels include `labels`, summed by the value of `label`."""
    want, found = set(labels.items()), {}
    for (n, ls), v in samples.items():
        if n == name and want <= ls:
            value = dict(ls)[label]
            found[value] = found.get(value, 0.0) + v
    return found
