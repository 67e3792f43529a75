"""What compression saved, per template: the figures of the report, counted as requests pass."""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Savings", "TemplateSaving"]


@dataclass(frozen=True, slots=True)
class TemplateSaving:
    """Compression's effect on one template's requests."""

    template: str
    requests: int
    tokens_before: int
    tokens_saved: int

    @property
    def share(self) -> float:
        return self.tokens_saved / self.tokens_before if self.tokens_before else 0.0

    def render(self) -> str:
        return (f"{self.template}: {self.tokens_saved:,} of {self.tokens_before:,} prompt tokens saved "
                f"({self.share:.1%}) over {self.requests:,} requests")


class Savings:
    """Tokens saved per template, at most `max_templates` of them. Thread-safe."""

    def __init__(self, max_templates: int = 512) -> None:
        self.max_templates = max_templates
        self._figures: dict[str, list[int]] = {}
        self._lock = threading.Lock()

    def add(self, template: str, before: int, saved: int) -> None:
        with self._lock:
            found = self._figures.get(template)
            if found is None:
                if len(self._figures) >= self.max_templates:
                    return
                found = self._figures[template] = [0, 0, 0]
            found[0] += 1
            found[1] += before
            found[2] += saved

    def report(self) -> list[TemplateSaving]:
        with self._lock:
            return [TemplateSaving(t, n, before, saved) for t, (n, before, saved) in sorted(self._figures.items())]
