"""The compact RTT histogram exposes exactly what prometheus_client's Histogram would."""

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from trunkguard.obs.metrics import RTT_BUCKETS
from trunkguard.obs.rtt import CompactHistogram


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 5)), max_size=40))
def test_same_exposition_as_prometheus_client(obs: list[tuple[str, float]]) -> None:
    ra, rb = CollectorRegistry(), CollectorRegistry()
    ref = Histogram("x_seconds", "doc", ["trunk", "target"], buckets=RTT_BUCKETS, registry=ra)
    ours = CompactHistogram("x_seconds", "doc", ["trunk", "target"], RTT_BUCKETS, rb)
    streamed = CompactHistogram("x_seconds", "doc", ["trunk", "target"], RTT_BUCKETS)
    for trunk, v in obs:
        ref.labels(trunk, "t").observe(v)
        ours.labels(trunk, "t").observe(v)
        streamed.labels(trunk, "t").observe(v)

    def lines(r: CollectorRegistry) -> set[str]:
        return {
            line
            for line in generate_latest(r).decode().splitlines()
            if line and "_created" not in line and not line.startswith("#")
        }

    assert lines(ra) == lines(rb)
