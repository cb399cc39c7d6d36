"""Overload on a real node process (one worker, no batching, a slow emulated device).

A job whose full run would be late but whose earliest *acceptable* exit is on time is degraded
to that exit rather than refused, and never to an exit too inaccurate to answer with (the
first exits of digits-resnet-w0.25 are right 10% and 39% of the time: a degraded answer comes
from exit 2 or later). A burst far past what fits is answered at once with 429 + Retry-After.

Deadlines are set from the node's own measured service time ``t`` (the emulated device pads
each block to its calibrated time on this host, so ``t`` differs between hosts; a fixed
deadline put no job in the degrade window on a host slightly faster than the one it was tuned
on). In the degrade burst, the k-th job's deadline is 1.5 t + 0.9 k t: each job adds 0.1 t of
lateness, less than the 0.2 t between exit 2 and the last exit, so some job lands in that
window whatever the host's exact speed within +-10%.
"""

from __future__ import annotations

import asyncio
import time

from p2pinfer import AsyncClient
from p2pinfer.errors import Overloaded, P2PError
from tests.p2pinfer.pinned_load import RESNET, SLOW, resnet_image

BEST = "digits-resnet-w0.5"

ACCEPTABLE_EXIT = 2  # the earliest exit keeping 90% of the arm's accuracy (0.898 of 0.974)


Outcome = tuple[str, float, float | None, int]


async def answers(url: str, deadlines_ms: list[float], offset: int) -> list[tuple[str, float, float | None, object]]:
    """Simultaneous requests, one per deadline; (outcome, client seconds, Retry-After, result) each."""
    async with AsyncClient(url) as client:
        async def one(index: int) -> tuple[str, float, float | None, object]:
            started = time.monotonic()
            try:
                result = await client.infer(resnet_image(offset + index), deadline_ms=deadlines_ms[index],
                                            family="digits-resnet", user=f"burst-{index % 4}")
            except Overloaded as error:
                return "rejected", time.monotonic() - started, error.retry_after_s, None
            except P2PError as error:
                return type(error).__name__, time.monotonic() - started, None, None
            outcome = "degraded" if result.degraded or result.exit < 3 else "full"
            return outcome, time.monotonic() - started, None, result

        return await asyncio.gather(*(one(index) for index in range(len(deadlines_ms))))


async def burst(url: str, deadlines_ms: list[float], offset: int) -> list[Outcome]:
    """(outcome, client seconds, Retry-After, exit block or -1) per request."""
    return [(outcome, seconds, retry_after, getattr(result, "exit", -1))
            for outcome, seconds, retry_after, result in await answers(url, deadlines_ms, offset)]


async def service_ms(url: str) -> float:
    """The node's time for one lone request, as it reports it (median of three)."""
    async with AsyncClient(url) as client:
        measured = []
        for index in range(3):
            result = await client.infer(resnet_image(index), deadline_ms=10_000, family="digits-resnet")
            measured.append(sum(timing.compute_ms for timing in result.timings))
        return sorted(measured)[1]


def test_overload_degrades_to_an_acceptable_exit_and_answers_429_quickly(node_factory):
    node = node_factory("--node-id", "solo", "--secret", "overload", "--variants", RESNET,
                        "--device-profile", SLOW, "--policy", "fixed", "--arm", f"{RESNET}@3",
                        "--queue-capacity", "64", "--max-batch", "1")
    service = asyncio.run(service_ms(node.url))
    spread = [1.5 * service + 0.9 * service * index for index in range(12)]
    degrade_burst = asyncio.run(burst(node.url, spread, offset=0))
    outcomes = [outcome for outcome, *_ in degrade_burst]
    # kept and answered at an earlier exit that is still accurate enough, not refused ...
    assert "degraded" in outcomes, degrade_burst
    assert all(exit_block >= ACCEPTABLE_EXIT for outcome, _, _, exit_block in degrade_burst
               if outcome in ("degraded", "full")), degrade_burst
    # ... and a burst far past what fits is mostly refused, at once, with a time to come back
    flood = asyncio.run(burst(node.url, [2.5 * service] * 24, offset=100))
    rejections = [(seconds, retry_after) for outcome, seconds, retry_after, _ in flood if outcome == "rejected"]
    assert len(rejections) >= 16, flood
    times = sorted(seconds for seconds, _ in rejections)
    assert times[len(times) // 2] < 2.5 * service / 1000 / 3, f"429s should be quick: {times}"
    assert all(retry_after is not None and retry_after > 0 for _, retry_after in rejections)


def test_a_request_refused_for_load_with_the_best_arm_is_served_by_a_cheaper_variant(node_factory):
    """Two variants, the most accurate arm by default (w0.5 exit 3): when the queue leaves no
    time for it (not even its earliest acceptable exit), the entry tries the cheaper arm that
    keeps 90% of its accuracy (w0.25 exit 2, about 0.4 of the time) before refusing, and says
    so (degraded). Deadlines step by 0.7 t: lateness grows 0.3 t per job, less than the 0.44 t
    window where only the cheaper arm fits."""
    cheaper = RESNET  # digits-resnet-w0.25
    node = node_factory("--node-id", "shed", "--secret", "overload", "--variants", f"{BEST},{cheaper}",
                        "--device-profile", SLOW, "--policy", "fixed", "--queue-capacity", "64", "--max-batch", "1")
    service = asyncio.run(service_ms(node.url))
    spread = [1.5 * service + 0.7 * service * index for index in range(14)]
    results = asyncio.run(answers(node.url, spread, offset=300))
    served = [result for outcome, _, _, result in results if result is not None]
    shed = [result for result in served if result.variant == cheaper]
    assert shed, [(outcome, getattr(result, "variant", None)) for outcome, _, _, result in results]
    assert all(result.degraded and result.exit >= ACCEPTABLE_EXIT for result in shed)
    assert all(result.variant == BEST or result in shed for result in served)
