"""Per-(trunk, target) RTT histograms that stay small at 10,000 trunks.

prometheus_client's Histogram keeps a locked value per bucket per child: about 4 KB
per trunk, 40 MB at 10,000 trunks, and a scrape builds a Sample object per series
(130,000 of them, ~110 MB at once). Here a child is a list of counts, and expose()
streams the same text exposition (cumulative buckets, _count, _sum) in chunks.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString


class _Child:
    __slots__ = ("counts", "sum")

    def __init__(self, n: int) -> None:
        self.counts = [0] * (n + 1)  # one per bucket, the last is +Inf
        self.sum = 0.0


class RttChild:
    """What .labels() returns: observe() like a prometheus_client child."""

    __slots__ = ("_bounds", "_c")

    def __init__(self, c: _Child, bounds: tuple[float, ...]) -> None:
        self._c, self._bounds = c, bounds

    def observe(self, value: float) -> None:
        # Bucket "le" is inclusive: bisect_left finds the first bound >= value.
        self._c.counts[bisect_left(self._bounds, value)] += 1
        self._c.sum += value


class CompactHistogram(Collector):
    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._name, self._doc = name, documentation
        self._labelnames = list(labelnames)
        self._bounds = tuple(sorted(float(b) for b in buckets))
        les: list[str] = [floatToGoString(b) for b in self._bounds]  # type: ignore[no-untyped-call]
        self._les = [*les, "+Inf"]
        self._children: dict[tuple[str, ...], _Child] = {}
        if registry is not None:  # Metrics streams it instead, see expose()
            registry.register(self)

    def labels(self, *values: str) -> RttChild:
        if len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {self._labelnames}")
        c = self._children.get(values)
        if c is None:
            c = self._children[values] = _Child(len(self._bounds))
        return RttChild(c, self._bounds)

    def remove(self, *values: str) -> None:
        self._children.pop(values, None)

    @property
    def name(self) -> str:
        return self._name

    def expose(self, chunk: int = 500) -> Iterator[bytes]:
        """Text format 0.0.4, as generate_latest() would write it, a few hundred children
        at a time so a scrape never holds all 130,000 lines."""
        n, les = self._name, self._les
        yield (f"# HELP {n} {_escape_help(self._doc)}\n# TYPE {n} histogram\n").encode()
        items = list(self._children.items())
        for start in range(0, len(items), chunk):
            out: list[str] = []
            for values, c in items[start : start + chunk]:
                labels = ",".join(
                    f'{k}="{_escape_label(v)}"'
                    for k, v in zip(self._labelnames, values, strict=True)
                )
                running = 0
                for le, count in zip(les, list(c.counts), strict=True):
                    running += count
                    out.append(f'{n}_bucket{{{labels},le="{le}"}} {float(running)}\n')
                out.append(f"{n}_count{{{labels}}} {float(running)}\n")
                out.append(f"{n}_sum{{{labels}}} {floatToGoString(c.sum)}\n")  # type: ignore[no-untyped-call]
            yield "".join(out).encode()

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        fam = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for values, c in list(self._children.items()):
            running, buckets = 0, []
            for le, n in zip(self._les, list(c.counts), strict=True):
                running += n
                buckets.append((le, float(running)))
            fam.add_metric(list(values), buckets, c.sum)
        yield fam


def _escape_label(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(v: str) -> str:
    return v.replace("\\", "\\\\").replace("\n", "\\n")
