"""The boundary codec benchmark's report: every codec timed on every boundary, with the spread
of its repeats, the bytes that travelled and the host's state (on small random boundaries)."""

from __future__ import annotations

import numpy as np

from benchmarks.boundary_codecs import measure


def test_the_report_has_every_codec_on_every_boundary_with_its_spread():
    generator = np.random.default_rng(0)
    boundaries = [np.maximum(generator.standard_normal(shape, dtype=np.float32), 0.0)
                  for shape in ((1, 3, 16, 16), (1, 8, 8, 8))]
    report = measure(repeats=2, calls=1, boundaries=boundaries)
    assert [row["shape"] for row in report["boundaries"]] == [[1, 3, 16, 16], [1, 8, 8, 8]]
    for row in report["boundaries"]:
        assert {"float32", "float16", "uint8", "uint8-channel"} <= set(row["codecs"])
        uint8 = row["codecs"]["uint8"]
        assert uint8["wire_bytes"] == row["float32_bytes"] // 4 and uint8["travelled_as"] == "uint8"
        speed = uint8["gigabytes_per_s_of_float32"]
        assert 0 < speed["min"] <= speed["median"] <= speed["max"]
        assert uint8["round_trip_ms"] > 0
    assert isinstance(report["target_met"], bool) and "boundary 1 [1, 8, 8, 8]" in report["target"]
    assert 0 <= report["host"]["host_cpu_percent"] <= 100 and len(report["host"]["load_average_before"]) == 3
