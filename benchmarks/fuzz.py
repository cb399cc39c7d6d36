"""Fuzz a real node: >= 5,000 cases on each inference route (``/v1/infer`` binary frames and
JSON, ``/v2/models/{family}/infer`` JSON), answers counted by status; then the node's RSS
before and after 10,000 bad requests.

Cases: byte mutations (flip, insert, delete, truncate) of a valid body, and generated
requests whose fields take hostile values (NaN, Inf, huge floats, negative or zero weights,
long ids, deep nesting, wrong types). The figure to reach: no answer >= 500 except 504.

    python -m benchmarks.fuzz [--cases 5000] [--bad 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import numpy as np

from p2pinfer.cli.cluster import start_node
from p2pinfer.protocol.wire import CONTENT_TYPE

RESULTS = Path(__file__).resolve().parent / "results"
JSON = "application/json"
SHAPE = (1, 1, 8, 8)
HOSTILE_NUMBERS: list[Any] = [0, -1, 1, 1e300, -1e300, 3e38, float("nan"), float("inf"), -0.0, 2**63, -(2**63),
                              2**64 - 1, 1e-320, 0.5, True, None, "1", [], {}]
HOSTILE_TEXT: list[Any] = ["", "a" * 200, "a b", "x\x00y", "ü" * 10, "[[[[", "digits-cnn", "digits-cnn-w1",
                           "../../etc", 5, None, ["x"], "u" * 5000]


def _value(rng: random.Random) -> Any:
    pool = rng.choice((HOSTILE_NUMBERS, HOSTILE_TEXT))
    return rng.choice(pool)


def _tensor(rng: random.Random) -> np.ndarray:
    choice = rng.random()
    if choice < 0.3:
        return rng.choice([np.full(SHAPE, 3e38, np.float32), np.full(SHAPE, 1e300, np.float64),
                           np.full(SHAPE, np.nan, np.float32), np.zeros((1, 1, 9, 9), np.float32),
                           np.zeros((0, 1, 8, 8), np.float32), np.zeros(SHAPE, np.int64)])
    return np.asarray(np.random.default_rng(rng.randrange(1 << 30)).normal(size=SHAPE), dtype=np.float32)


def _fields(rng: random.Random) -> dict[str, Any]:
    fields: dict[str, Any] = {"deadline_ms": 2000.0, "family": "digits-cnn"}
    for name in rng.sample(["deadline_ms", "family", "user", "qoe", "variant", "exit", "confidence_threshold",
                            "request_id", "plan", "version"], rng.randint(0, 4)):
        if name == "qoe":
            fields[name] = {key: _value(rng) for key in rng.sample(["accuracy", "latency", "energy", "x"],
                                                                  rng.randint(1, 3))}
        else:
            fields[name] = _value(rng)
    return fields


def _mutate(rng: random.Random, body: bytes) -> bytes:
    data = bytearray(body)
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        kind = rng.random()
        where = rng.randrange(len(data))
        if kind < 0.5:
            data[where] = rng.randrange(256)
        elif kind < 0.7:
            data.insert(where, rng.randrange(256))
        elif kind < 0.9:
            del data[where]
        else:
            del data[where:]
    return bytes(data)


def _frame(fields: dict[str, Any], array: np.ndarray) -> bytes:
    """A binary frame built by hand, so hostile header values reach the node unvalidated."""
    dtype = {"float32": "float32", "float64": "float64", "int64": "int64"}[array.dtype.name]
    header = msgspec.msgpack.encode({**fields, "tensors": [
        {"name": "input", "dtype": dtype, "shape": list(array.shape), "nbytes": array.nbytes}]})
    pad = b"\0" * ((-(4 + len(header))) % 8)
    return len(header).to_bytes(4, "big") + header + pad + array.astype(array.dtype.newbyteorder("<")).tobytes()


def _json(document: Any) -> bytes:
    return json.dumps(document, allow_nan=True).encode()


def v1_frame_case(rng: random.Random) -> tuple[bytes, str]:
    body = _frame(_fields(rng), _tensor(rng))
    return (_mutate(rng, body) if rng.random() < 0.6 else body), CONTENT_TYPE


def v1_json_case(rng: random.Random) -> tuple[bytes, str]:
    document = {**_fields(rng), "data": _tensor(rng).tolist()}
    if rng.random() < 0.05:
        document["data"] = json.loads("[" * 900 + "]" * 900)
    body = _json(document)
    return (_mutate(rng, body) if rng.random() < 0.5 else body), JSON


def v2_case(rng: random.Random) -> tuple[bytes, str]:
    array = _tensor(rng)
    parameters = {key: _value(rng) for key in rng.sample(
        ["deadline_ms", "user", "variant", "exit", "confidence_threshold", "qoe_accuracy", "qoe_latency",
         "qoe_energy", "binary_data_output"], rng.randint(0, 4))}
    document = {"id": rng.choice(["r1", None, "x" * 300, 5]), "parameters": parameters,
                "inputs": [{"name": "input", "shape": list(array.shape),
                            "datatype": rng.choice(["FP32", "FP64", "INT64", "BYTES", "FP16"]),
                            "data": array.ravel().tolist()}]}
    body = _json(document)
    content_type = JSON if rng.random() < 0.95 else rng.choice(["text/plain", "application/octet-stream"])
    return (_mutate(rng, body) if rng.random() < 0.5 else body), content_type


ROUTES = {"v1_frame": ("/v1/infer", v1_frame_case), "v1_json": ("/v1/infer", v1_json_case),
          "v2_json": ("/v2/models/digits-cnn/infer", v2_case)}


async def fuzz_route(session: aiohttp.ClientSession, url: str, case, count: int, seed: int,
                     concurrency: int = 8, limit_s: float = 600.0) -> dict[str, Any]:
    rng = random.Random(seed)
    cases = [case(rng) for _ in range(count)]
    statuses: Counter[int] = Counter()
    examples: dict[int, str] = {}
    queue: asyncio.Queue[tuple[bytes, str]] = asyncio.Queue()
    for item in cases:
        queue.put_nowait(item)
    deadline = time.monotonic() + limit_s

    async def worker() -> None:
        while not queue.empty() and time.monotonic() < deadline:
            body, content_type = queue.get_nowait()
            try:
                async with session.post(url, data=body, headers={"Content-Type": content_type},
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                    text = await answer.read()
                    statuses[answer.status] += 1
                    if answer.status >= 500 and answer.status not in examples:
                        examples[answer.status] = text[:300].decode("utf-8", "replace")
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                statuses[-1] += 1
                examples.setdefault(-1, repr(error))

    await asyncio.gather(*[worker() for _ in range(concurrency)])
    server_errors = sum(n for status, n in statuses.items() if status >= 500 and status != 504)
    return {"cases": sum(statuses.values()), "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "answers_5xx_not_504": server_errors, "examples_5xx": examples}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def main_async(cases: int, bad: int, seed: int) -> dict[str, Any]:
    node = start_node(["--variants", "digits-cnn"])
    try:
        report: dict[str, Any] = {"node": node.url, "cases_per_route": cases, "seed": seed, "routes": {}}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16)) as session:
            for index, (name, (path, case)) in enumerate(ROUTES.items()):
                started = time.monotonic()
                result = await fuzz_route(session, node.url + path, case, cases, seed + index)
                result["seconds"] = round(time.monotonic() - started, 1)
                report["routes"][name] = result
                print(name, result["statuses"], "5xx(not 504):", result["answers_5xx_not_504"], flush=True)
            # RSS: warm up, then 10,000 bad requests with fresh client-chosen values each time

            def bad_case(rng: random.Random) -> tuple[bytes, str]:
                user = f"user-{rng.randrange(1 << 60):x}"
                return _json({"deadline_ms": 2000, "family": "digits-cnn", "user": user + "!" * rng.randint(0, 1),
                              "request_id": f"id-{rng.randrange(1 << 60):x}",
                              "data": np.full(SHAPE, rng.choice([3e38, float("nan")]), np.float32).tolist()}), JSON

            await fuzz_route(session, node.url + "/v1/infer", bad_case, 1000, seed + 98)
            before = rss_bytes(node.process.pid)
            flood = await fuzz_route(session, node.url + "/v1/infer", bad_case, bad, seed + 97)
            after = rss_bytes(node.process.pid)
            report["rss"] = {"bad_requests": flood["cases"], "statuses": flood["statuses"],
                             "before_mib": round(before / 2**20, 1), "after_mib": round(after / 2**20, 1),
                             "change_percent": round(100 * (after - before) / before, 2)}
            print("rss", report["rss"], flush=True)
            async with session.get(node.url + "/metrics") as answer:
                text = await answer.text()
            report["internal_errors_metric"] = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                                                   if line.startswith("p2pinfer_internal_errors_total"))
    finally:
        node.terminate()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--bad", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=18)
    arguments = parser.parse_args()
    report = asyncio.run(main_async(arguments.cases, arguments.bad, arguments.seed))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fuzz.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS / 'fuzz.json'}")


if __name__ == "__main__":
    main()
