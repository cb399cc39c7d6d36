"""The executor in-process: EDF order, bounded queue, budget checks, degrade, micro-batching."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

from p2pinfer.errors import DeadlineExceeded, Draining, Overloaded, RefusedBeforeStart
from p2pinfer.runtime.executor import FLUSH_BUDGET_FACTOR, QUIET_TURNS, Executor, Job, PassedExit
from zoo.dataset import held_out
from zoo.model_slice import load_slice

VARIANT = "digits-cnn-w1"


@pytest.fixture(scope="module")
def model():
    return load_slice(VARIANT)


def sample(index: int = 0) -> torch.Tensor:
    images, _ = held_out((1, 8, 8))
    return images[index:index + 1]


class Gate:
    """Holds the worker inside the first job's first block until released, recording order."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.order: list[tuple[str, int, int]] = []

    def on_block(self, variant: str, block: int, seconds: float, padded: float, batch_size: int) -> None:
        self.order.append((variant, block, batch_size))
        self.entered.set()
        self.release.wait(timeout=30)


def job(name: str, deadline_s: float, **options) -> Job:
    return Job(request_id=name, variant=VARIANT, first_block=0, last_block=2, hidden=sample(),
               deadline=time.monotonic() + deadline_s, exit_block=2, **options)


def paced_executor(model, gate: Gate, preemptive: bool = False) -> Executor:
    """One worker, no batching, 0.4 s predicted per whole job (blocks 0-2): admission arithmetic
    in round numbers, while ``gate`` holds the first job. Not preemptive unless asked: the
    admission tests count the held job's whole run as work ahead."""
    return Executor({VARIANT: model}, lambda variant, first, last, batch: 0.4 * (last - first + 1) / 3,
                    capacity=16, max_batch=1, on_block=gate.on_block, preemptive=preemptive)


async def wait_entered(gate: Gate) -> None:
    assert await asyncio.to_thread(gate.entered.wait, 30)


async def test_edf_order_under_mixed_deadlines(model):
    gate = Gate()
    executor = Executor({VARIANT: model}, lambda *a: 0.0, capacity=16, max_batch=1, on_block=gate.on_block)
    ran: list[str] = []
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        deadlines = {"e": 50.0, "a": 10.0, "d": 40.0, "b": 20.0, "c": 30.0}
        futures = {name: executor.submit(job(name, seconds)) for name, seconds in deadlines.items()}
        for name, future in futures.items():
            future.add_done_callback(lambda _f, name=name: ran.append(name))
        gate.release.set()
        await asyncio.gather(blocker, *futures.values())
        assert ran == sorted(deadlines, key=deadlines.get)
    finally:
        gate.release.set()
        executor.close()


async def test_full_queue_is_refused_with_retry_after(model):
    gate = Gate()
    executor = Executor({VARIANT: model}, lambda *a: 0.0, capacity=2, max_batch=1, on_block=gate.on_block)
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        queued = [executor.submit(job(f"q{i}", 60)) for i in range(2)]
        with pytest.raises(Overloaded) as refused:
            executor.submit(job("one-too-many", 60))
        assert refused.value.retry_after_s is not None and refused.value.status == 429
        gate.release.set()
        results = await asyncio.gather(blocker, *queued)
        assert all(result.exit_block == 2 for result in results)
    finally:
        gate.release.set()
        executor.close()


async def test_hopeless_budget_is_answered_with_deadline_exceeded(model):
    executor = Executor({VARIANT: model}, lambda *a: 0.010, capacity=4)  # predicts 10 ms per block
    try:
        with pytest.raises(DeadlineExceeded):
            await executor.submit(job("late", 0.005, allow_degrade=False))
    finally:
        executor.close()


async def test_a_job_predicted_to_end_past_its_deadline_is_refused_before_any_block_runs(model):
    """Even on an idle unit: 0.4 s predicted, 0.3 s left. Refused at submission, naming what it
    needs and what is left, and no block ran (the unit stayed free for the next job)."""
    ran: list[int] = []
    executor = Executor({VARIANT: model}, lambda variant, first, last, batch: 0.4 * (last - first + 1) / 3,
                        capacity=4, on_block=lambda variant, block, *rest: ran.append(block))
    try:
        with pytest.raises(RefusedBeforeStart, match=r"need ~400\.0 ms, (29\d|300)\.\d ms left"):
            executor.submit(job("hopeless", 0.3, allow_degrade=False))
        assert ran == [] and executor.in_flight == 0 and len(executor.queue) == 0
        roomy = await executor.submit(job("roomy", 5.0, allow_degrade=False))
        assert roomy.exit_block == 2 and ran == [0, 1, 2]
    finally:
        executor.close()


async def test_degrades_to_the_last_exit_passed_when_the_next_block_would_miss(model):
    def predictor(variant, first, last, batch):  # block 2 is predicted far too slow
        return 10.0 if first == 2 else 0.0

    executor = Executor({VARIANT: model}, predictor, capacity=4)
    try:
        result = await executor.submit(job("degrade", 1.0))
        assert result.degraded and result.exit_block == 1 and result.logits is not None
        expected = model.exit_logits(1, model.run(sample(), 0, 1))
        assert torch.allclose(result.logits, expected, atol=1e-6)
        with pytest.raises(DeadlineExceeded) as late:
            await executor.submit(job("no-degrade", 1.0, allow_degrade=False))
        # blocks 0 and 1 ran: not a refusal before start (the entry must not re-plan it elsewhere)
        assert not isinstance(late.value, RefusedBeforeStart)
    finally:
        executor.close()


async def test_no_running_record_outlives_a_runs_answers(model, monkeypatch):
    """A worker answers, then tidies up: a job admitted in between read the finished run's record
    as work still ahead (a block predicted at 10 s that was never to run: the next job refused,
    seen under a CPU hog). Whatever ends a run — a late block, the last block, a failure — its
    record is gone when its answers are."""
    import p2pinfer.runtime.executor as executor_module

    seen: list[dict] = []
    resolve, resolve_batch = executor_module._resolve, executor_module._resolve_batch

    def recording_resolve(job, result=None, error=None):
        seen.append(dict(executor._running))
        resolve(job, result, error)

    def recording_resolve_batch(answers):
        seen.append(dict(executor._running))
        resolve_batch(answers)

    monkeypatch.setattr(executor_module, "_resolve", recording_resolve)
    monkeypatch.setattr(executor_module, "_resolve_batch", recording_resolve_batch)
    slow_block_2 = [True]

    def predictor(variant, first, last, batch):
        return 10.0 if first == 2 and slow_block_2[0] else 0.0

    executor = Executor({VARIANT: model}, predictor, capacity=4)
    try:
        assert (await executor.submit(job("degrades", 1.0))).degraded  # late before block 2
        with pytest.raises(DeadlineExceeded):
            await executor.submit(job("refused", 1.0, allow_degrade=False))
        slow_block_2[0] = False
        assert (await executor.submit(job("finishes", 1.0))).exit_block == 2  # the last block ran
        model.blocks[1].forward, saved = None, model.blocks[1].forward  # a failing block
        try:
            with pytest.raises(Exception, match="execution failed"):
                await executor.submit(job("fails", 1.0))
        finally:
            model.blocks[1].forward = saved
    finally:
        executor.close()
    assert len(seen) >= 4 and all(records == {} for records in seen), seen


async def test_a_job_that_can_no_longer_start_in_time_after_its_wait_is_refused_before_start(model):
    """Admitted on the predictions of the moment; by the time the unit is free its first block
    no longer fits (the device slowed down meanwhile): refused as ``RefusedBeforeStart``, so
    the entry knows nothing ran and may still send it to a peer."""
    gate = Gate()
    seconds_per_block = [0.001]
    executor = Executor({VARIANT: model}, lambda variant, first, last, batch: seconds_per_block[0] * (last - first + 1),
                        capacity=4, max_batch=1, on_block=gate.on_block)
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        waiting = executor.submit(job("waiting", 5.0, allow_degrade=False))
        seconds_per_block[0] = 10.0  # throttled while it waited
        gate.release.set()
        with pytest.raises(RefusedBeforeStart, match="block 0 of"):
            await waiting
        assert (await blocker).exit_block == 2
        assert [block for name, block, size in gate.order] == [0, 1, 2]  # the waiting job ran no block
    finally:
        gate.release.set()
        executor.close()


async def test_compatible_requests_run_as_one_batch_with_correct_outputs(model):
    gate = Gate()
    executor = Executor({VARIANT: model}, lambda *a: 0.0, capacity=16, max_batch=8, on_block=gate.on_block)
    try:
        blocker = executor.submit(Job(request_id="blocker", variant=VARIANT, first_block=0, last_block=0,
                                      hidden=sample(), deadline=time.monotonic() + 60, exit_block=0))
        await wait_entered(gate)
        futures = [executor.submit(Job(request_id=f"b{i}", variant=VARIANT, first_block=0, last_block=2,
                                       hidden=sample(i), deadline=time.monotonic() + 60, exit_block=2))
                   for i in range(4)]
        gate.release.set()
        await blocker
        results = await asyncio.gather(*futures)
        assert {result.batch_size for result in results} == {4}
        for index, result in enumerate(results):
            expected = model.exit_logits(2, model.run(sample(index)))
            assert torch.allclose(result.logits, expected, atol=1e-5)
            # its row as floats (what a local answer reads), and its own row of the activation
            assert result.logit_values == pytest.approx(expected[0].tolist(), abs=1e-5)
            assert torch.allclose(result.hidden, model.run(sample(index)), atol=1e-5)
    finally:
        gate.release.set()
        executor.close()


async def test_a_member_without_room_for_the_batch_is_not_batched(model):
    gate = Gate()
    # a batch of n is predicted to take n seconds: a member with 1.5 s of budget cannot join a batch of 2
    executor = Executor({VARIANT: model}, lambda variant, first, last, n: float(n) if n > 1 else 0.0,
                        capacity=16, max_batch=8, on_block=gate.on_block)
    try:
        blocker = executor.submit(Job(request_id="blocker", variant=VARIANT, first_block=0, last_block=0,
                                      hidden=sample(), deadline=time.monotonic() + 60, exit_block=0))
        await wait_entered(gate)
        tight = executor.submit(job("tight", 1.5))
        roomy = executor.submit(job("roomy", 60))
        gate.release.set()
        await blocker
        results = await asyncio.gather(tight, roomy)
        assert [result.batch_size for result in results] == [1, 1]
    finally:
        gate.release.set()
        executor.close()


async def test_a_job_the_queue_would_make_late_is_refused_at_once(model):
    gate = Gate()  # 0.4 s predicted per job: three queued ahead (EDF) make a 1.55 s deadline hopeless
    executor = paced_executor(model, gate)
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        queued = [executor.submit(job(f"q{i}", 1.5)) for i in range(3)]
        started = time.monotonic()
        with pytest.raises(Overloaded) as refused:
            executor.submit(job("late", 1.55, allow_degrade=False))
        assert time.monotonic() - started < 0.05 and refused.value.retry_after_s >= 1.0
        roomy = executor.submit(job("roomy", 5.0))  # time enough after the queue: accepted
        gate.release.set()
        results = await asyncio.gather(blocker, *queued, roomy)
        assert all(result.exit_block == 2 for result in results)
    finally:
        gate.release.set()
        executor.close()


async def test_a_job_with_a_cheaper_arm_may_wait_only_its_share_of_the_slack(model):
    """0.4 s per job; the running blocker and two queued jobs make 1.2 s of wait, and a 2.0 s
    deadline leaves 1.6 s of slack. With all of it the job is accepted; with half (0.8 s: a
    request the controller would retry with a cheaper arm) the same queue refuses it, saying
    so, and a job with a roomier deadline (1.6 s of wait, 3.6 s of slack) is still accepted at
    half."""
    gate = Gate()
    executor = paced_executor(model, gate)
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        queued = [executor.submit(job(f"q{i}", 1.3, allow_degrade=False)) for i in range(2)]
        with pytest.raises(Overloaded, match="50% of its slack"):
            executor.submit(job("half", 2.0, allow_degrade=False, wait_share=0.5))
        whole = executor.submit(job("whole", 2.0, allow_degrade=False))
        roomy = executor.submit(job("roomy-half", 4.0, allow_degrade=False, wait_share=0.5))
        gate.release.set()
        results = await asyncio.gather(blocker, *queued, whole, roomy)
        assert [result.exit_block for result in results] == [2, 2, 2, 2, 2]
    finally:
        gate.release.set()
        executor.close()


async def test_admission_prices_the_job_at_its_tail_and_the_queue_at_its_mean(model):
    """Mean 0.4 s a job, p90 0.8 s. Behind the running blocker (0.4 s of work), a 1.0 s
    deadline fits the mean (0.4 + 0.4) but not the tail (0.4 + 0.8): refused. A 1.5 s deadline
    fits the tail and is admitted; the queue ahead of a later job counts at its mean."""
    gate = Gate()
    executor = Executor({VARIANT: model}, lambda variant, first, last, batch: 0.4 * (last - first + 1) / 3,
                        tail_predictor=lambda variant, first, last, batch: 0.8 * (last - first + 1) / 3,
                        capacity=16, max_batch=1, on_block=gate.on_block, preemptive=False)
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        with pytest.raises(Overloaded, match="queued work ahead"):
            executor.submit(job("tight", 1.0, allow_degrade=False))
        admitted = executor.submit(job("fits-tail", 1.5, allow_degrade=False))
        # blocker 0.4 + fits-tail at its mean 0.4 + own tail 0.8 = 1.6 s <= 1.7 s
        later = executor.submit(job("later", 1.7, allow_degrade=False))
        gate.release.set()
        results = await asyncio.gather(blocker, admitted, later)
        assert [result.exit_block for result in results] == [2, 2, 2]
    finally:
        gate.release.set()
        executor.close()


async def test_an_emulated_device_pads_each_block_to_its_calibrated_time(model):
    """x5 of a 20 ms calibration: every block of a lone job takes >= 100 ms of device time,
    the first (cold) run included, whatever the real compute took."""
    padded: list[float] = []

    def on_block(variant: str, block: int, seconds: float, padded_s: float, batch_size: int) -> None:
        padded.append(padded_s)

    calibrated = {(VARIANT, block): 0.02 for block in range(3)}
    executor = Executor({VARIANT: model}, lambda *a: 0.0, capacity=4, max_batch=1, slowdown=lambda: 5.0,
                        on_block=on_block, calibrated_s=calibrated)
    try:
        started = time.monotonic()
        await executor.submit(job("lone", 30))
        assert time.monotonic() - started >= 3 * 0.1 * 0.95
    finally:
        executor.close()


async def test_a_newcomer_that_would_push_an_accepted_job_past_its_deadline_is_refused(model):
    """EDF runs an earlier deadline first: 0.4 s per job and the blocker just started, a job
    accepted with 1.1 s fits (0.8 s) until a newcomer due at 0.9 s would go first (1.2 s)."""
    gate = Gate()
    executor = paced_executor(model, gate)
    try:
        blocker = executor.submit(job("blocker", 60))
        await wait_entered(gate)
        accepted = executor.submit(job("accepted", 1.1, allow_degrade=False))
        with pytest.raises(Overloaded, match="accepted request") as refused:
            executor.submit(job("pushy", 0.9, allow_degrade=False))
        assert refused.value.retry_after_s is not None and refused.value.retry_after_s > 0
        later = executor.submit(job("later", 60, allow_degrade=False))  # goes after: pushes nobody
        gate.release.set()
        results = await asyncio.gather(blocker, accepted, later)
        assert [result.exit_block for result in results] == [2, 2, 2]
        assert not any(result.degraded for result in results)
    finally:
        gate.release.set()
        executor.close()


async def test_a_batch_grows_only_while_its_own_size_still_fits(model):
    """A batch of n is predicted to take 0.5 n s: with 1.6 s of budget a batch of 3 fits and
    a batch of 4 does not (checking a batch of 2 and then taking every compatible job made
    batches that missed)."""
    gate = Gate()
    executor = Executor({VARIANT: model}, lambda variant, first, last, n: 0.5 * n if n > 1 else 0.0,
                        capacity=16, max_batch=8, on_block=gate.on_block)
    try:
        blocker = executor.submit(Job(request_id="blocker", variant=VARIANT, first_block=0, last_block=0,
                                      hidden=sample(), deadline=time.monotonic() + 60, exit_block=0))
        await wait_entered(gate)
        futures = [executor.submit(job(f"b{index}", 1.6)) for index in range(4)]
        gate.release.set()
        await blocker
        results = await asyncio.gather(*futures)
        assert sorted(result.batch_size for result in results) == [1, 3, 3, 3]
    finally:
        gate.release.set()
        executor.close()


async def test_a_tiny_job_on_an_idle_unit_runs_on_the_event_loop_and_busy_or_emulated_ones_do_not(model):
    """Handing a sub-millisecond job to a worker thread costs more than the job: an idle,
    unemulated unit runs it inline; with work in flight, or on an emulated slow device
    (padding sleeps), jobs go to the worker as before."""
    threads: list[str] = []

    def on_block(variant: str, block: int, seconds: float, padded: float, batch_size: int) -> None:
        threads.append(threading.current_thread().name)

    executor = Executor({VARIANT: model}, lambda *a: 0.0001, capacity=4, max_batch=1, on_block=on_block,
                        inline_max_s=0.002)
    try:
        result = await executor.submit(job("inline", 30))
        assert result.exit_block == 2 and set(threads) == {threading.current_thread().name}
        expected = model.exit_logits(2, model.run(sample()))
        assert torch.allclose(result.logits, expected, atol=1e-5)
        threads.clear()
        executor.in_flight = 1  # as if a worker were running a job: the next one queues behind it
        queued = executor.submit(job("queued", 30))
        executor.in_flight = 0
        await queued
        assert threads and all(name.startswith("executor-") for name in threads)
    finally:
        executor.close()
    threads.clear()
    emulated = Executor({VARIANT: model}, lambda *a: 0.0001, capacity=4, max_batch=1, on_block=on_block,
                        inline_max_s=0.002, slowdown=lambda: 4.0)
    try:
        await emulated.submit(job("emulated", 30))
        assert threads and all(name.startswith("executor-") for name in threads)
    finally:
        emulated.close()


async def next_turn() -> None:
    """Return once the event loop has run what was scheduled before this call (a flush at the
    end of the current turn included)."""
    loop = asyncio.get_running_loop()
    turned = loop.create_future()
    loop.call_soon(turned.set_result, None)
    await asyncio.wait_for(turned, timeout=10)


def inline_executor(model, batches: list[int], *, window_s: float = 0.002, max_batch: int = 8) -> Executor:
    """Tiny predicted jobs on an idle unit (inline), batching up to ``max_batch``; ``batches``
    receives the size of every batch run."""
    return Executor({VARIANT: model}, lambda *a: 0.0001, capacity=16, max_batch=max_batch,
                    batch_window_s=window_s, inline_max_s=0.002, on_batch=batches.append)


def inline_job(name: str, index: int) -> Job:
    return Job(request_id=name, variant=VARIANT, first_block=0, last_block=2, hidden=sample(index),
               deadline=time.monotonic() + 30, exit_block=2)


async def test_inline_jobs_submitted_in_one_loop_turn_run_as_one_batch(model):
    """Several clients' requests read in the same turn reach the executor together: they run as
    one batch on the loop (one pass of the model), each answer equal to its own run alone."""
    batches: list[int] = []
    executor = inline_executor(model, batches)
    try:
        futures = [executor.submit(inline_job(f"r{index}", index)) for index in range(5)]
        results = await asyncio.gather(*futures)
        assert batches == [5]
        for index, result in enumerate(results):
            alone = model.exit_logits(2, model.run(sample(index)))
            assert result.batch_size == 5 and result.exit_block == 2
            assert torch.allclose(result.logits, alone, atol=1e-5)
    finally:
        executor.close()


async def test_a_lone_client_never_waits_for_a_batching_window(model):
    """One client sending back to back arrives densely, but nobody joins it: with a 30 s window,
    each of its requests is still answered at the end of its own turn, alone."""
    batches: list[int] = []
    executor = inline_executor(model, batches, window_s=30.0)
    try:
        for index in range(10):
            await asyncio.wait_for(executor.submit(inline_job(f"r{index}", index)), timeout=10)
        assert batches == [1] * 10
    finally:
        executor.close()


async def test_a_flush_waits_while_jobs_arrive_turn_after_turn_and_runs_when_full_or_quiet(model):
    """Requests on their way arrive over a few loop turns: the flush waits while new ones come
    (and ``QUIET_TURNS`` after the last), runs at once when the batch is full, and without new
    arrivals runs after the quiet turns, not at the end of the (30 s) window."""
    batches: list[int] = []
    executor = inline_executor(model, batches, window_s=30.0, max_batch=3)
    try:
        first = executor.submit(inline_job("b0", 0))
        await asyncio.sleep(0)  # one loop turn: the flush looked once, no new job
        assert not first.done()
        second = executor.submit(inline_job("b1", 1))
        for _ in range(QUIET_TURNS):  # a job came: the quiet turns count again from here
            await asyncio.sleep(0)
            assert not first.done()
        third = executor.submit(inline_job("b2", 2))
        await asyncio.wait_for(asyncio.gather(first, second, third), timeout=10)
        assert batches == [3]  # full: ran without waiting for more
        lone = executor.submit(inline_job("c0", 0))
        for _ in range(QUIET_TURNS):
            await asyncio.sleep(0)
            assert not lone.done()
        await asyncio.wait_for(lone, timeout=1.0)  # quiet turns over: long before the window
        assert batches == [3, 1]
    finally:
        executor.close()


async def test_a_flush_runs_a_few_times_inline_max_on_the_loop_and_the_workers_take_the_rest(model):
    """0.8 ms predicted per job, 2 ms inline-sized alone, and a flush may run three times that
    (6 ms): of ten jobs arriving together seven run as one batch on the loop (5.6 ms), the
    other three go to the worker, which may batch them; every answer equals its own run alone."""
    batches: list[int] = []
    threads: list[str] = []

    def on_block(variant: str, block: int, seconds: float, padded: float, batch_size: int) -> None:
        threads.append(threading.current_thread().name)

    executor = Executor({VARIANT: model}, lambda variant, first, last, batch: 0.0008 * batch, capacity=16,
                        max_batch=8, inline_max_s=0.002, on_batch=batches.append, on_block=on_block)
    try:
        results = await asyncio.gather(*[executor.submit(inline_job(f"r{index}", index)) for index in range(10)])
        assert FLUSH_BUDGET_FACTOR == 3.0
        assert batches[0] == 7 and sum(batches) == 10
        assert threads[0] == threading.current_thread().name
        assert any(name.startswith("executor-") for name in threads)
        for index, result in enumerate(results):
            assert torch.allclose(result.logits, model.exit_logits(2, model.run(sample(index % 10))), atol=1e-5)
    finally:
        executor.close()


async def test_admission_counts_this_turns_inline_jobs_as_work_ahead(model):
    """Jobs of one loop turn are priced against the inline jobs admitted before them in that
    turn: predicted 0.4 s each with 1.9 s to their deadline, four fit (1.2 s ahead of the
    fourth leaves it its 1.5 s of slack) and a fifth does not. A newcomer due earlier runs
    first, and is refused when that would push an accepted job past its deadline."""
    executor = Executor({VARIANT: model}, lambda *a: 0.4, capacity=16, max_batch=8, inline_max_s=1.0)

    def job(name: str, deadline: float) -> Job:
        return Job(request_id=name, variant=VARIANT, first_block=0, last_block=2, hidden=sample(0),
                   deadline=deadline, exit_block=2, allow_degrade=False)

    try:
        deadline = time.monotonic() + 1.9
        accepted = [executor.submit(job(f"r{index}", deadline)) for index in range(4)]
        with pytest.raises(Overloaded, match="queued work ahead"):
            executor.submit(job("r4", deadline))
        with pytest.raises(Overloaded, match="make an accepted request miss its deadline"):
            executor.submit(job("early", deadline - 0.9))
        results = await asyncio.wait_for(asyncio.gather(*accepted), timeout=10)
        assert [result.exit_block for result in results] == [2] * 4
    finally:
        executor.close()


async def test_inline_jobs_pending_at_shutdown_are_answered_draining(model):
    batches: list[int] = []
    executor = inline_executor(model, batches)
    future = executor.submit(inline_job("late", 0))
    executor.close()
    with pytest.raises(Draining):
        await asyncio.wait_for(future, timeout=10)
    assert batches == []


async def test_a_running_job_yields_between_blocks_to_an_earlier_deadline(model):
    """0.4 s predicted per job (0.133 s a block). A job due in 0.6 s arrives while a roomy one
    runs its first block: run to completion the roomy job's 0.4 s would leave no time (refused),
    preemptive it waits one block, runs, and the roomy job resumes where it stopped, its
    answer the same as an uninterrupted run's."""
    for preemptive in (False, True):
        gate = Gate()
        executor = paced_executor(model, gate, preemptive=preemptive)
        try:
            roomy = executor.submit(job("roomy", 60))
            await wait_entered(gate)
            if not preemptive:
                with pytest.raises(Overloaded, match="queued work ahead"):
                    executor.submit(job("urgent", 0.6, allow_degrade=False))
                gate.release.set()
                await roomy
                assert executor.preemptions == 0
                continue
            urgent = executor.submit(job("urgent", 0.6, allow_degrade=False))
            gate.release.set()
            roomy_result, urgent_result = await asyncio.gather(roomy, urgent)
            # block 0 of the roomy job, the urgent job's three blocks, then the roomy job's last two
            assert [block for _, block, _ in gate.order] == [0, 0, 1, 2, 1, 2]
            assert executor.preemptions == 1
            expected = model.exit_logits(2, model.run(sample(), 0, 2))
            assert roomy_result.exit_block == 2 and not roomy_result.degraded
            assert torch.allclose(roomy_result.logits, expected, atol=1e-6)
            assert urgent_result.exit_block == 2 and not urgent_result.degraded
        finally:
            gate.release.set()
            executor.close()


async def test_a_newcomer_that_would_push_the_running_job_past_its_deadline_is_refused(model):
    """Preemption keeps admission's promise to the job it interrupts: the running job, due in
    0.7 s, has 0.27 s left after its block; a newcomer due in 0.6 s (0.4 s of its own) would
    end it at ~0.8 s: refused, saying why. One due after it waits its turn and is accepted."""
    gate = Gate()
    executor = paced_executor(model, gate, preemptive=True)
    try:
        running = executor.submit(job("running", 0.7, allow_degrade=False))
        await wait_entered(gate)
        with pytest.raises(Overloaded, match="accepted request"):
            executor.submit(job("pushy", 0.6, allow_degrade=False))
        after = executor.submit(job("after", 60, allow_degrade=False))
        gate.release.set()
        results = await asyncio.gather(running, after)
        assert [result.exit_block for result in results] == [2, 2] and executor.preemptions == 0
    finally:
        gate.release.set()
        executor.close()


async def test_a_resumed_job_can_still_degrade_to_the_exit_it_passed_before_it_was_preempted(model):
    """A job preempted after block 0 carries the exit it passed there: when its next block is
    then predicted late, it answers at exit 0 (degraded), not with an error."""
    def predictor(variant, first, last, batch):  # block 1 is predicted far too slow
        return 10.0 if first == 1 else 0.0

    executor = Executor({VARIANT: model}, predictor, capacity=4, max_batch=1)
    try:
        hidden = model.run(sample(), 0, 0)
        resumed = job("resumed", 1.0)
        resumed.first_block, resumed.hidden, resumed.ran_blocks = 1, hidden, True
        resumed.passed = PassedExit(0, None, hidden)
        loop = asyncio.get_running_loop()
        resumed.loop, resumed.future = loop, loop.create_future()
        executor._run([resumed])  # as a worker resumes it (admission already took it once)
        result = await resumed.future
        assert result.degraded and result.exit_block == 0
        assert torch.allclose(result.logits, model.exit_logits(0, hidden), atol=1e-6)
    finally:
        executor.close()


async def test_on_run_reports_each_runs_blocks_once_before_its_answer(model):
    """``on_run`` gets one call per run with every block's time (not one call per block), on
    the worker and inline alike, and before the answer: a client that reads the node's
    metrics right after its answer sees its run there. A per-job ``block_timer`` (warm-up)
    still goes block by block, and that run is not reported to ``on_run``."""
    runs: list[tuple[str, int, int, int, str]] = []
    seen_at_answer: list[int] = []

    def on_run(variant: str, first: int, seconds: list[float], batch_size: int) -> None:
        assert all(value >= 0 for value in seconds)
        runs.append((variant, first, len(seconds), batch_size, threading.current_thread().name))

    executor = Executor({VARIANT: model}, lambda *a: 0.0001, capacity=16, max_batch=1, on_run=on_run)
    inline = Executor({VARIANT: model}, lambda *a: 0.0001, capacity=16, max_batch=1, on_run=on_run,
                      inline_max_s=0.01)
    try:
        for target in (executor, inline):
            result = await target.submit(job(f"whole-{target is inline}", 30))
            seen_at_answer.append(len(runs))
            assert result.exit_block == 2
        assert seen_at_answer == [1, 2]
        assert [run[:4] for run in runs] == [(VARIANT, 0, 3, 1), (VARIANT, 0, 3, 1)]
        assert runs[0][4].startswith("executor-") and runs[1][4] == threading.current_thread().name
        timed: list[int] = []
        await executor.submit(job("warm", 30, block_timer=lambda variant, block, *rest: timed.append(block)))
        assert timed == [0, 1, 2] and len(runs) == 2
    finally:
        executor.close()
        inline.close()
