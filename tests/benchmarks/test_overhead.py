"""benchmarks.overhead and the servers it compares p2pinfer with (the floor, optional peers)."""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
from pathlib import Path

import aiohttp
import numpy as np
import psutil
import pytest
from aiohttp import web

from benchmarks import overhead
from benchmarks.serving_floor import FloorAnswerer
from benchmarks.serving_peers import PEERS
from p2pinfer.cli.cluster import start_node
from p2pinfer.protocol import open_inference, wire
from p2pinfer.testing import free_port
from zoo.dataset import held_out
from zoo.manifest import read_manifest


def _samples() -> tuple[np.ndarray, np.ndarray, str]:
    variant = read_manifest().variant(overhead.VARIANT)
    images, labels = held_out(tuple(variant.input_shape))
    return images.numpy().astype(np.float32), labels.numpy(), variant.family


def test_each_peer_gets_the_frame_in_its_own_framing() -> None:
    samples, _, family = _samples()
    frame = overhead.FRAME.body(samples[:1], family)
    _, tensors = wire.decode_frame(frame, wire.InferFrameHeader)
    np.testing.assert_array_equal(tensors[wire.INPUT_TENSOR], samples[:1])
    litserve = overhead.PEER_WIRES["litserve"]
    envelope = json.loads(litserve.body(samples[:1], family))
    assert litserve.content_type == "application/json"
    _, tensors = wire.decode_frame(base64.b64decode(envelope["frame"]), wire.InferFrameHeader)
    np.testing.assert_array_equal(tensors[wire.INPUT_TENSOR], samples[:1])
    assert overhead.PEER_WIRES["ray-serve"].envelope is None  # Ray Serve reads the raw body
    assert set(overhead.PEER_WIRES) == set(PEERS) == set(overhead.PEER_MODULES)


def test_pytriton_gets_the_frame_as_one_bytes_element_of_a_binary_v2_request() -> None:
    """Triton's binary tensor extension: the JSON part, as long as the header says, then the
    element's 4-byte little-endian length and the frame itself; the label from the v2 outputs."""
    samples, _, family = _samples()
    frame = overhead.FRAME.body(samples[:1], family)
    triton = overhead.PEER_WIRES["pytriton"]
    body, headers = triton.request(samples[:1], family)
    assert triton.path == "/v2/models/floor/infer"
    assert headers["Content-Type"] == "application/octet-stream"
    json_length = int(headers["Inference-Header-Content-Length"])
    request = json.loads(body[:json_length])
    (tensor,) = request["inputs"]
    assert (tensor["name"], tensor["datatype"], tensor["shape"]) == ("frame", "BYTES", [1])
    binary = body[json_length:]
    assert tensor["parameters"]["binary_data_size"] == len(binary) == len(frame) + 4
    assert int.from_bytes(binary[:4], "little") == len(frame)
    _, tensors = wire.decode_frame(binary[4:], wire.InferFrameHeader)
    np.testing.assert_array_equal(tensors[wire.INPUT_TENSOR], samples[:1])
    answer = {"model_name": "floor", "outputs": [{"name": "probabilities", "datatype": "FP32", "data": [0.1, 0.9]},
                                                 {"name": "label", "datatype": "INT64", "shape": [1], "data": [7]}]}
    assert triton.label(answer) == 7
    assert overhead.FRAME.label({"label": 3, "probabilities": [1.0]}) == 3


def test_the_open_inference_phase_sends_what_the_nodes_v2_parser_reads() -> None:
    """The node's own parser takes the benchmark's v2 request: the same input, the deadline and
    the pinned variant, a request id (the native frames carry one too)."""
    samples, _, family = _samples()
    body, headers = overhead.OIP.request(samples[:1], family)
    assert overhead.OIP.route(family) == f"/v2/models/{family}/infer"
    parsed = open_inference.parse_infer_request(body, headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(parsed.inputs["input"], samples[:1])
    assert (parsed.deadline_ms, parsed.variant) == (5000, overhead.VARIANT)
    again, again_headers = overhead.OIP.request(samples[:1], family)
    assert parsed.id and parsed.id != open_inference.parse_infer_request(
        again, again_headers["Inference-Header-Content-Length"]).id  # a fresh id per request
    assert overhead.ROUTE_PHASES["p2pinfer-oip"] == ("p2pinfer", overhead.OIP)


def test_a_peer_not_installed_is_named_with_the_extra_that_adds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "ray" else object())
    assert overhead.missing_peers(["litserve", "ray-serve"]) == {
        "ray-serve": "ray.serve is not installed: pip install -e '.[bench-peers]'"}


def test_unknown_peers_are_refused_before_anything_starts(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        overhead.main(["--peers", "torchserve"])
    assert "unknown peers ['torchserve']" in capsys.readouterr().err


def test_the_peers_answer_is_the_floors() -> None:
    """What every peer runs per request: the floor's model to its final exit, same labels."""
    samples, labels, family = _samples()
    answerer = FloorAnswerer(overhead.VARIANT, "cpu-eager")
    answers = [answerer.answer(overhead.request_body(samples[index:index + 1], family)) for index in range(40)]
    assert all(abs(sum(answer["probabilities"]) - 1.0) < 1e-5 for answer in answers)
    assert np.mean([answer["label"] == label for answer, label in zip(answers, labels[:40], strict=True)]) >= 0.9


def test_round_ratios_pair_each_round_with_the_floors_same_round() -> None:
    def row(p50_ms: float, requests_per_s: float) -> dict:
        return {"batch1": {"p50_ms": p50_ms}, "clients8": {"requests_per_s": requests_per_s}}

    rows = {"floor": [row(1.0, 1000), row(2.0, 500), row(1.0, 2000)],
            "p2pinfer": [row(1.5, 800), row(2.0, 500), row(3.0, 1000)]}
    spread = overhead.round_ratios(rows, clients=8)
    assert set(spread) == {"p2pinfer"}
    assert spread["p2pinfer"]["rps_vs_floor"] == {"median": 0.8, "min": 0.5, "max": 1.0}
    assert spread["p2pinfer"]["p50_vs_floor"] == {"median": 1.5, "min": 1.0, "max": 3.0}


def test_extra_cpu_is_each_servers_cpu_per_request_above_the_floors_in_microseconds() -> None:
    summary = {"floor": {"server_cpu_ms_per_request_concurrent": 0.182},
               "p2pinfer": {"server_cpu_ms_per_request_concurrent": 0.315},
               "p2pinfer-batching": {"server_cpu_ms_per_request_concurrent": 0.170}}
    assert overhead.extra_cpu_us(summary) == {"p2pinfer": 133.0, "p2pinfer-batching": -12.0}


def _paced(rate: float, cpu_us: float, sustained: bool = True) -> dict:
    return {"offered_per_s": rate, "requests_per_s": rate if sustained else rate / 2, "completed": 10,
            "sustained": sustained, "server_cpu_us_per_request": cpu_us, "p50_ms": 1.0, "p99_ms": 2.0}


def test_extra_cpu_at_a_rate_pairs_each_round_with_the_floors_and_skips_rounds_that_fell_behind() -> None:
    rows = {"floor": [{"paced": [_paced(1000, 230.0), _paced(3000, 200.0)]},
                      {"paced": [_paced(1000, 250.0), _paced(3000, 210.0, sustained=False)]},
                      {"paced": [_paced(1000, 240.0), _paced(3000, 190.0)]}],
            "p2pinfer": [{"paced": [_paced(1000, 280.0), _paced(3000, 260.0)]},
                         {"paced": [_paced(1000, 330.0), _paced(3000, 250.0)]},
                         {"paced": [_paced(1000, 300.0), _paced(3000, 250.0, sustained=False)]}]}
    extra = overhead.extra_cpu_us_at_rates(rows)
    assert set(extra) == {"p2pinfer"}
    assert extra["p2pinfer"]["1000"] == {"median": 60.0, "min": 50.0, "max": 80.0, "rounds": 3}
    # round 2: the floor fell behind; round 3: the node did: only round 1 compares
    assert extra["p2pinfer"]["3000"] == {"median": 60.0, "min": 60.0, "max": 60.0, "rounds": 1}
    rows["p2pinfer"][0]["paced"][1]["sustained"] = False
    assert overhead.extra_cpu_us_at_rates(rows)["p2pinfer"]["3000"] == {"rounds": 0}
    medians = overhead.paced_medians(rows)
    assert medians["floor"]["1000"]["server_cpu_us_per_request"] == 240.0
    assert medians["floor"]["3000"]["sustained_rounds"] == 2
    assert medians["p2pinfer"]["3000"]["rounds"] == 3


def _counting_server(delay_s: float = 0.0) -> tuple[web.Application, list[float]]:
    arrivals: list[float] = []

    async def infer(request: web.Request) -> web.Response:
        await request.read()
        arrivals.append(asyncio.get_running_loop().time())
        if delay_s:
            await asyncio.sleep(delay_s)  # a server slower than the schedule, not a synchronisation
        return web.json_response({"label": 0})

    app = web.Application()
    app.add_routes([web.post("/v1/infer", infer)])
    return app, arrivals


async def _serve_paced(app: web.Application, rate: float, seconds: float, clients: int, phase: float = 0.0) -> dict:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    samples, _, family = _samples()
    try:
        async with aiohttp.ClientSession() as session:
            return await overhead.paced(session, f"http://127.0.0.1:{port}", samples, family, clients, rate,
                                        seconds, psutil.Process(), phase=phase)
    finally:
        await runner.cleanup()


async def test_a_paced_phase_sends_on_schedule_and_counts_every_answer() -> None:
    app, arrivals = _counting_server()
    row = await _serve_paced(app, rate=200.0, seconds=0.5, clients=4)
    assert row["completed"] == len(arrivals) == 100
    assert row["sustained"] is True
    # on a schedule, not as fast as possible: 100 requests at 200/s span ~0.5 s, not a burst
    assert 0.4 <= arrivals[-1] - arrivals[0] <= 1.5
    assert row["requests_per_s"] <= 200.0 * 1.05
    assert row["p50_ms"] is not None and row["p50_ms"] >= 0.0
    assert row["sent_late_p50_ms"] <= 4 / 200 * 1000  # on time: within one client's interval


async def test_a_phase_shifts_the_schedule_by_that_share_of_an_interval() -> None:
    """Two paced loads from one process (``paired_ab --rate``) must not fall due together: at
    10/s, half an interval puts the first request 50 ms after the start (a sleep ends no earlier
    than asked, so this lower bound holds on any host)."""
    app, arrivals = _counting_server()
    called = asyncio.get_running_loop().time()
    row = await _serve_paced(app, rate=10.0, seconds=0.3, clients=1, phase=0.5)
    assert row["completed"] == 3
    assert arrivals[0] - called >= 0.05


def test_a_server_that_answers_at_the_rate_but_queues_has_not_kept_up() -> None:
    """Session 20's case: 3,988 of 4,000 offered per second answered, every request, but its
    clients' requests left 20 ms late at the median (a queue): not a load it keeps up with."""
    assert overhead.kept_up(4000, 8, 20000, 20000, 3988.0, sent_late_p50_ms=0.3)
    assert not overhead.kept_up(4000, 8, 20000, 20000, 3988.0, sent_late_p50_ms=20.0)
    assert not overhead.kept_up(4000, 8, 20000, 20000, 3700.0, sent_late_p50_ms=0.3)  # under 95 % of the rate
    assert not overhead.kept_up(4000, 8, 20000, 19999, 3988.0, sent_late_p50_ms=0.3)  # one never answered


async def test_a_server_slower_than_the_schedule_is_not_sustained_and_the_phase_ends() -> None:
    app, arrivals = _counting_server(delay_s=0.05)  # 2 clients x 20/s at most, 400/s offered
    row = await _serve_paced(app, rate=400.0, seconds=0.25, clients=2)
    assert row["sustained"] is False
    assert row["completed"] == len(arrivals) < 100
    assert row["p99_ms"] >= 50.0  # counted from the due time: the wait behind slow answers is in it


def test_paced_rates_must_be_positive_numbers(capsys: pytest.CaptureFixture[str]) -> None:
    for rates in ("1000,fast", "0,1000"):
        with pytest.raises(SystemExit):
            overhead.main(["--paced-rates", rates])
        assert "--paced-rates" in capsys.readouterr().err


@pytest.mark.slow
def test_the_floor_runs_on_the_event_loop_it_is_given() -> None:
    """``--floor-event-loop uvloop`` takes the loop out of the comparison (the node's default)."""
    pytest.importorskip("uvloop")
    floor = start_node(["--variant", overhead.VARIANT, "--backend", "cpu-eager", "--event-loop", "uvloop"],
                       launcher=("-m", "benchmarks.serving_floor"))
    samples, labels, family = _samples()

    async def ask() -> int:
        async with aiohttp.ClientSession() as session, session.post(
                f"{floor.url}/v1/infer", data=overhead.request_body(samples[:1], family),
                headers={"Content-Type": wire.CONTENT_TYPE}) as response:
            assert response.status == 200
            return int((await response.json())["label"])

    try:
        assert asyncio.run(ask()) == FloorAnswerer(overhead.VARIANT, "cpu-eager").answer(
            overhead.request_body(samples[:1], family))["label"]
    finally:
        floor.terminate(timeout_s=15)


@pytest.mark.slow
@pytest.mark.parametrize("peer", PEERS)
def test_a_peer_server_answers_frames_like_the_floor(peer: str) -> None:
    if overhead.missing_peers([peer]):
        pytest.skip(f"{peer} is not installed (the bench-peers extra)")
    samples, labels, family = _samples()
    server = start_node(["--variant", overhead.VARIANT], timeout_s=180.0,
                        launcher=("-m", "benchmarks.serving_peers", peer))
    wire_format = overhead.PEER_WIRES[peer]

    async def ask() -> list[int]:
        found = []
        async with aiohttp.ClientSession() as session:
            for index in range(5):
                body, headers = wire_format.request(samples[index:index + 1], family)
                async with session.post(f"{server.url}{wire_format.path}", data=body, headers=headers) as response:
                    assert response.status == 200, await response.text()
                    found.append(wire_format.label(await response.json(content_type=None)))
        return found

    try:
        answerer = FloorAnswerer(overhead.VARIANT, "cpu-eager")
        expected = [answerer.answer(overhead.request_body(samples[index:index + 1], family))["label"]
                    for index in range(5)]
        assert asyncio.run(ask()) == expected
    finally:
        server.terminate(timeout_s=30)


@pytest.mark.slow
def test_one_short_round_reports_every_ratio_with_the_host_cpu(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    # 200 sequential requests: a process's CPU time moves in 10 ms clock ticks, and 20 requests of
    # ~0.5 ms could read as none (a CPU ratio of 0)
    overhead.main(["--rounds", "1", "--requests", "200", "--seconds", "0.5", "--clients", "2",
                   "--backend", "onnxruntime", "--paced-rates", "100", "--out", str(out)])
    report = json.loads(out.read_text())
    assert set(report["medians"]) == {"floor", "p2pinfer", "p2pinfer-batching", "p2pinfer-oip"}
    assert {"p50_vs_floor", "rps_vs_floor_unbatched", "rps_vs_floor_batched", "oip_rps_vs_floor"} <= set(
        report["ratios"])
    assert all(value > 0 for value in report["ratios"].values())
    assert 0.0 <= report["host"]["idle_host_cpu_percent_servers_up"] <= 100.0
    assert report["medians"]["floor"]["requests_per_s"] > 0
    assert set(report["extra_cpu_us_per_request"]) == {"p2pinfer", "p2pinfer-batching", "p2pinfer-oip"}
    assert report["paced"]["floor"]["100"]["sustained_rounds"] == 1  # 100/s: every server keeps up
    assert set(report["extra_cpu_us_at_rate"]) == {"p2pinfer", "p2pinfer-batching", "p2pinfer-oip"}
    assert report["extra_cpu_us_at_rate"]["p2pinfer"]["100"]["rounds"] == 1
