"""The node's hot-path histograms expose what prometheus_client's Histogram exposes."""

from __future__ import annotations

import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from p2pinfer.runtime.metrics import LATENCY_BUCKETS, HotHistogram


def samples(text: bytes) -> list[str]:
    return [line for line in text.decode().splitlines() if "_created" not in line]


def test_a_hot_histogram_renders_as_prometheus_clients_histogram():
    values = [0.0, 0.0005, 0.001, 0.0011, 0.003, 0.003, 0.05, 4.9, 5.0, 7.5, -1.0]  # on, between, beyond bounds
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    hot = HotHistogram("p2pinfer_block_compute_seconds", "Compute time per block", ("variant", "block"),
                       LATENCY_BUCKETS, ours)
    reference = Histogram("p2pinfer_block_compute_seconds", "Compute time per block", ["variant", "block"],
                          buckets=LATENCY_BUCKETS, registry=theirs)
    for index, value in enumerate(values):
        hot.labels("digits-cnn-w1", str(index % 2)).observe(value)
        reference.labels(variant="digits-cnn-w1", block=str(index % 2)).observe(value)
    assert samples(generate_latest(ours)) == samples(generate_latest(theirs))
    with pytest.raises(ValueError, match="takes labels"):
        hot.labels("digits-cnn-w1")


def test_observations_from_several_threads_are_all_counted():
    """Four threads observe while a fifth scrapes (each scrape folds what is waiting): none is lost."""
    registry = CollectorRegistry()
    hot = HotHistogram("p2pinfer_request_latency_seconds", "Entry-node latency", (), LATENCY_BUCKETS, registry)
    done = threading.Event()
    scraped: list[float] = []

    def observe() -> None:
        for _ in range(20_000):
            hot.observe(0.003)

    def scrape() -> None:
        while not done.is_set():
            scraped.append(registry.get_sample_value("p2pinfer_request_latency_seconds_count") or 0.0)

    threads = [threading.Thread(target=observe) for _ in range(4)]
    scraper = threading.Thread(target=scrape)
    scraper.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    done.set()
    scraper.join()
    assert scraped == sorted(scraped) and len(scraped) > 1  # counts only grow, scrape after scrape
    assert registry.get_sample_value("p2pinfer_request_latency_seconds_count") == 80_000
    assert registry.get_sample_value("p2pinfer_request_latency_seconds_bucket", {"le": "0.002"}) == 0
    assert registry.get_sample_value("p2pinfer_request_latency_seconds_sum") == pytest.approx(240.0)
