"""The deadline-aware executor: one bounded earliest-deadline-first queue, torch in worker
threads off the event loop, the budget checked before every block, micro-batching.

Why EDF: with per-request deadlines it minimises misses when the load is feasible at all.
Why preemptive, at block boundaries: EDF's optimality holds for preemptive scheduling; run to
completion, a 60 ms robot request that arrives while a 46 ms camera range runs waits for all
of it (the bandwidth-trace edge refused robots with "25 ms of queued work ahead" for this).
Between two blocks a running batch yields to a queued job with an earlier deadline: it goes
back to the queue with its activation and resumes where it stopped, so the urgent job waits
for one block at most.
Why bounded: a full queue answers ``Overloaded`` (429 + Retry-After) at once instead of
growing a backlog nobody can serve in time. Why check before each block: a request that can
no longer make it is answered now (``DeadlineExceeded``, or degraded to the last exit it
already passed when its QoE allows) instead of burning compute on a late answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import heapq
import itertools
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec
import torch

from p2pinfer.errors import DeadlineExceeded, Draining, Overloaded, P2PError, RefusedBeforeStart
from p2pinfer.runtime.model_host import BATCH_EFFICIENCY
from zoo.model_slice import ModelSlice

BlockTimer = Callable[[str, int, float, float, int], None]  # (variant, block, real s, padded s, batch size)
RunTimer = Callable[[str, int, list[float], int], None]  # (variant, first block, padded s per block run, batch)
Predictor = Callable[[str, int, int, int], float]  # (variant, first, last, batch size) -> seconds
BlockPredictor = Callable[[str, int, int, int], list[float]]  # the same, per block of [first, last]


class Job(msgspec.Struct, eq=False):  # a job is itself: equal only to itself (never compares tensors)
    """One unit of work: blocks [first_block, last_block] of a variant on one input.

    ``exit_block`` set means: compute that exit's logits after ``last_block`` (== exit_block).
    ``deadline`` is on this process's monotonic clock (budgets are relative across nodes).
    A msgspec Struct, like the run's other records (``JobResult``, the controller's
    ``Execution``...): built in C, a tenth of a dataclass's ``__init__`` (frozen dataclasses set
    each field through ``object.__setattr__``), and each request builds several.
    """

    request_id: str
    variant: str
    first_block: int
    last_block: int
    hidden: torch.Tensor
    deadline: float
    exit_block: int | None = None
    confidence_threshold: float | None = None
    allow_degrade: bool = True
    min_exit: int | None = None  # the earliest exit a degraded answer may come from (None: any)
    wait_share: float = 1.0
    """The share of its slack (budget left after its own run) that queued work ahead may take
    before admission refuses it. Below 1 for a request with a cheaper arm to fall back on:
    under overload a queue then fills only part way with full-quality work and keeps room for
    the cheaper arms that requests refused here retry with (degrade before refusing)."""
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None
    enqueued_at: float = msgspec.field(default_factory=time.monotonic)
    block_timer: BlockTimer | None = None  # instead of the executor's on_block (warm-up measures apart)
    emulate: bool = True  # pad to the emulated device's speed (warm-up only warms: it does not)
    ran_blocks: bool = False  # a batch it was part of ran some of its blocks before going on alone
    compute_s_before: float = 0.0  # compute this job already had before it was preempted
    passed: PassedExit | None = None  # the last exit a preempted run passed (what it may degrade to)
    predicted_s: float | None = None  # its whole range's predicted compute, as admission priced it
    answer_s: float | None = None  # its predicted compute to its first possible answer, as admission priced it

    sample_shape: tuple[int, ...] | None = None  # ``hidden``'s shape after the batch axis, once read

    def batch_key(self) -> tuple | None:
        if self.confidence_threshold is not None:
            return None  # per-sample early exit does not batch
        shape = self.sample_shape
        if shape is None:  # read once (a torch call): a job's key is asked at submit and at every flush
            shape = self.sample_shape = tuple(self.hidden.shape[1:])
        return (self.variant, self.first_block, self.last_block, self.exit_block, self.min_exit, shape)


@dataclass(frozen=True)
class PassedExit:
    """The last exit a run passed on its way: its block, and its logits or the activation
    there (the head runs only if the job must degrade to it)."""

    block: int
    logits: torch.Tensor | None
    hidden: torch.Tensor | None

    def rows(self, start: int, stop: int) -> PassedExit:
        return PassedExit(self.block, None if self.logits is None else self.logits[start:stop],
                          None if self.hidden is None else self.hidden[start:stop])

    @staticmethod
    def joined(jobs: list[Job]) -> PassedExit | None:
        """The passed exit of a batch of resumed jobs: one when they all passed the same one."""
        passed = [job.passed for job in jobs]
        first = passed[0]
        if first is None or any(other is None or other.block != first.block for other in passed):
            return None
        if len(jobs) == 1:
            return first

        def cat(parts: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if any(part is None for part in parts) else torch.cat([p for p in parts if p is not None])

        return PassedExit(first.block, cat([p.logits for p in passed if p is not None]),
                          cat([p.hidden for p in passed if p is not None]))


@dataclass
class RunningBatch:
    """What a worker is running, for admission: the block it is in (started, predicted s),
    what is left of the batch's range from that block on, and its earliest deadline."""

    block_started: float
    block_s: float
    rest_s: float
    deadline: float


class JobResult(msgspec.Struct, frozen=True, gc=False):
    """A job's outcome. A batch's results share its tensors and slice their own row when read
    (``hidden``, ``logits``): a local answer reads neither, only ``logit_values``, the row as
    Python floats from one ``tolist`` of the whole batch (a split and a ``tolist`` per answer
    were two torch calls each)."""

    batch_hidden: torch.Tensor  # the last block's output, for the whole batch the job ran in
    batch_logits: torch.Tensor | None  # exit logits when an exit was computed, the whole batch's
    exit_block: int | None
    last_block_run: int
    degraded: bool
    queue_ms: float
    compute_ms: float
    batch_size: int
    row: int = -1  # the job's row of the batch tensors; -1: all of them are the job's
    logit_values: list[float] | None = None  # this job's logits row as floats, when an exit was computed

    @property
    def hidden(self) -> torch.Tensor:
        """The job's own rows of the last block's output (only a plan that goes on past this
        run reads it)."""
        return self.batch_hidden if self.row < 0 else self.batch_hidden[self.row:self.row + 1]

    @property
    def logits(self) -> torch.Tensor | None:
        logits = self.batch_logits
        return logits if logits is None or self.row < 0 else logits[self.row:self.row + 1]


SMALL_ANSWER_CLASSES = 64
"""Up to this many classes an answer's softmax runs on Python floats (``controller.softmax_answer``):
for the handful of values of one answer each numpy call costs more in dispatch than the
arithmetic (17 µs with numpy for 10 classes, 8 µs in floats); above it, numpy. A run hands
such answers their logits as floats (``logit_rows``); a many-class row stays a tensor, which
numpy reads without a list between."""


def logit_rows(logits: torch.Tensor) -> list[list[float]]:
    """Each row of a batch's exit logits (on the CPU) as float32 values in Python floats, in one call."""
    if logits.dtype is not torch.float32:
        logits = logits.float()
    rows: list[list[float]] = logits.tolist()
    return rows


class EdfQueue:
    """A bounded priority queue ordered by (deadline, arrival); thread-safe."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._heap: list[tuple[float, int, Job]] = []
        self._sequence = itertools.count()
        self.condition = threading.Condition()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, job: Job, *, resumed: bool = False) -> None:
        """``resumed``: a preempted job going back; it was admitted already, so a full queue
        takes it anyway (refusing it now would drop an accepted request)."""
        with self.condition:
            if not resumed and len(self._heap) >= self.capacity:
                raise Overloaded(f"queue full ({self.capacity} waiting)", retry_after_s=0.05)
            heapq.heappush(self._heap, (job.deadline, next(self._sequence), job))
            self.condition.notify()

    def pop_locked(self) -> Job:
        return heapq.heappop(self._heap)[2]

    def earliest_deadline(self) -> float | None:
        with self.condition:
            return self._heap[0][0] if self._heap else None

    def take_compatible_locked(self, key: tuple, limit: int, accept: Callable[[Job], bool]) -> list[Job]:
        """Remove up to ``limit`` queued jobs with this batch key that ``accept`` allows."""
        taken: list[Job] = []
        kept: list[tuple[float, int, Job]] = []
        for entry in sorted(self._heap):
            job = entry[2]
            if len(taken) < limit and job.batch_key() == key and accept(job):
                taken.append(job)
            else:
                kept.append(entry)
        if taken:
            self._heap = kept
            heapq.heapify(self._heap)
        return taken

    def drain_locked(self) -> list[Job]:
        jobs = [entry[2] for entry in self._heap]
        self._heap.clear()
        return jobs


class Executor:
    """Runs jobs from an EDF queue on ``workers`` threads against loaded model slices."""

    def __init__(self, models: dict[str, ModelSlice], predictor: Predictor, *, capacity: int = 64,
                 workers: int = 1, max_batch: int = 8, batch_window_s: float = 0.002,
                 slowdown: Callable[[], float] = lambda: 1.0, on_block: BlockTimer | None = None,
                 name: str = "cpu", threads: int | None = None,
                 calibrated_s: Mapping[tuple[str, int], float] | None = None,
                 inline_max_s: float = 0.0, tail_predictor: Predictor | None = None,
                 preemptive: bool = True, on_batch: Callable[[int], None] | None = None,
                 block_predictor: BlockPredictor | None = None, on_run: RunTimer | None = None) -> None:
        """``calibrated_s``: (variant, block) -> seconds the block takes on this host by its
        offline profile; an emulated device pads a lone job's block to ``slowdown()`` x that.
        ``tail_predictor``: the p90 of a job's compute (default: ``predictor``, the mean), what
        admission prices the job's own run at (the queue ahead is a sum of many runs: means).
        ``inline_max_s``: a job predicted to take at most this long runs on the event loop
        when the unit is idle (0 disables). ``preemptive``: a running batch yields to a queued
        job with an earlier deadline between two blocks (the module docstring says why).
        ``block_predictor``: ``predictor`` of each block of a range at once, as a list (default:
        ``predictor`` asked block by block); a run reads it once, not before every block.
        ``on_run``: the blocks' times of each run in one call once it stops (finished, preempted
        or cut short), instead of ``on_block`` after every block: what a node's metrics and
        estimates need, at one call per run (a job's own ``block_timer`` still goes per block)."""
        self.models = models
        self.block_predictor: BlockPredictor = block_predictor or functools.partial(_each_block, predictor)
        self.calibrated_s = dict(calibrated_s or {})
        self.predictor = predictor
        self.tail_predictor = tail_predictor or predictor
        self.queue = EdfQueue(capacity)
        self.max_batch = max_batch
        self.batch_window_s = batch_window_s
        self.slowdown = slowdown
        self.on_block = on_block
        self.on_run = on_run
        self.on_batch = on_batch
        self.name = name
        self.threads = threads
        self.busy_seconds = 0.0
        self.in_flight = 0
        self.unanswered = 0  # submitted jobs whose future is not done (on the loop's thread: exact there)
        self._fastest: dict[tuple[str, int, int], float] = {}  # (variant, block, batch) -> fastest real s
        self._first_exits: dict[tuple[str, int, int, int | None], int] = {}  # _first_exit's answers
        self._arrivals: collections.deque[float] = collections.deque(maxlen=8)
        self._closed = False
        self._running: dict[int, RunningBatch] = {}  # worker thread -> the batch it runs
        self.preemptive = preemptive
        self.preemptions = 0
        self.inline_max_s = inline_max_s
        self._inline_ready = False
        self._inline_pending: list[Job] = []  # inline jobs of this loop turn, run together at its end
        self._inline_flush: asyncio.Handle | None = None  # when they run (at the end of a loop turn)
        self._inline_arrivals = 0  # inline jobs ever submitted: a flush waits while this moves
        self._flush_seen = 0  # its value when the pending flush last looked
        self._flush_opened = 0.0  # when the first pending inline job arrived
        self._quiet_turns = 0  # loop turns the pending flush has waited without a new job
        self._threads = [threading.Thread(target=self._work, name=f"executor-{name}-{i}", daemon=True)
                         for i in range(workers)]
        for thread in self._threads:
            thread.start()

    # ---- event-loop side -------------------------------------------------------------
    def submit(self, job: Job) -> asyncio.Future:
        if self._closed:
            raise Draining("node is shutting down")
        loop = asyncio.get_running_loop()
        self._admit(job)
        job.loop = loop
        job.future = future = loop.create_future()
        self.unanswered += 1
        future.add_done_callback(self._answered)
        if self._runs_inline(job):
            if self.max_batch <= 1 or job.batch_key() is None:
                self._run_inline([job])
                return job.future
            self._inline_pending.append(job)
            self._inline_arrivals += 1
            self._arrivals.append(job.enqueued_at)
            self._schedule_inline_flush(loop)
            return job.future
        self.queue.push(job)
        self._arrivals.append(job.enqueued_at)
        return job.future

    def _answered(self, future: asyncio.Future) -> None:
        self.unanswered -= 1

    def _runs_inline(self, job: Job) -> bool:
        """A tiny job on an idle, unemulated CPU unit runs right here on the event loop: handing
        it to a worker thread (a queue, a thread wake-up, a thread-safe callback back, and the
        two threads taking turns with the GIL) costs more than its compute. Only when nothing
        is queued or running, so EDF order and batching are untouched."""
        if self.inline_max_s <= 0 or self.in_flight or len(self.queue) or not job.emulate:
            return False
        if self.slowdown() > 1.0:
            return False
        return job.predicted_s is not None and job.predicted_s <= self.inline_max_s  # priced by _admit, just before

    def _run_inline(self, batch: list[Job]) -> None:
        if not self._inline_ready and self.threads is not None:
            torch.set_num_threads(self.threads)  # as the workers do (intra-op threads are per thread)
        self._inline_ready = True
        model = self.models.get(batch[0].variant)
        if model is not None and model.sessions_only:  # ONNX Runtime blocks: no autograd to keep out
            self._run_answered(batch, inline=True)
            return
        with torch.inference_mode():
            self._run_answered(batch, inline=True)

    def _schedule_inline_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """The pending inline jobs run together at the end of a loop turn (``_flush_waits``
        says which)."""
        if self._inline_flush is None:
            self._flush_opened = time.monotonic()
            self._flush_seen = self._inline_arrivals
            self._quiet_turns = 0
            self._inline_flush = loop.call_soon(self._flush_inline)

    def _flush_waits(self, pending: list[Job]) -> bool:
        """Whether the flush waits one more loop turn for more jobs before it runs: while new
        jobs arrived in the last turn or the ``QUIET_TURNS`` before it, within the batching
        window from the first pending job and the earliest deadline's slack, and until the
        batch is full.

        Why turns, not only a timer: a request whose bytes came in while the loop was busy
        needs two turns to reach the executor (one reads it and starts its handler, one runs
        the handler to ``submit``). A window on a timer, opened only when arrivals looked
        dense, flushed too early or waited for nobody: under 8 clients on eager PyTorch four
        flushes in ten ran a batch of one or two (two cost 1.84 singles there). A lone client
        waits two empty turns, microseconds; under load a flush takes everyone whose bytes are
        already in the node. (Waiting on a timer beyond the quiet turns, while fewer jobs wait
        than the last flush ran, cut the batches of one but served 0.9x as many requests/s:
        session 16, 4 interleaved rounds.)"""
        if len(pending) >= self.max_batch or self.batch_window_s <= 0:
            return False
        now = time.monotonic()
        if now >= self._flush_opened + self.batch_window_s:
            return False
        if self._inline_arrivals != self._flush_seen:
            self._flush_seen = self._inline_arrivals
            self._quiet_turns = 0
        else:
            self._quiet_turns += 1
            if self._quiet_turns > QUIET_TURNS:
                return False
        first = min(pending, key=lambda other: other.deadline)  # last: it asks the predictor
        return first.deadline - now > self.predictor(first.variant, first.first_block, first.last_block,
                                                     len(pending) + 1)

    def _flush_inline(self) -> None:
        """Run the inline jobs submitted during the last few turns of the event loop, batched.

        Why: requests that arrive together (several clients' bodies read in one turn, or in
        the next ones) reach the executor within a few turns; running them as one batch costs
        one pass of the model and its Python instead of one per request (digits-cnn-w1: 8
        samples in 1.7 ms eager against 8 x 0.87 ms one by one), with no thread hand-off. The
        flush waits while jobs arrive (``_flush_waits``), then runs EDF: compatible jobs
        (``batch_key``) join the earliest-deadline job while the grown batch is predicted to
        end before its deadline, as on the workers. The loop runs at most
        ``FLUSH_BUDGET_FACTOR`` x ``inline_max_s`` of predicted compute per flush (beyond the
        first job, which was inline-sized alone): what does not fit goes to the workers'
        queue, where it batches as any queued job and the loop stays free to read the next
        requests."""
        if self._inline_pending and not self._closed and self._flush_waits(self._inline_pending):
            loop = self._inline_pending[0].loop
            assert loop is not None  # submit set it
            self._inline_flush = loop.call_soon(self._flush_inline)
            return
        pending = sorted(self._inline_pending, key=lambda job: job.deadline)
        self._inline_pending, self._inline_flush = [], None
        if self._closed:
            for job in pending:
                _resolve(job, error=Draining("node shut down before this request ran"))
            return
        budget = self.inline_max_s * FLUSH_BUDGET_FACTOR
        while pending:
            first = pending[0]
            cost = self.predictor(first.variant, first.first_block, first.last_block, 1)
            if cost > budget:  # never the flush's first job: it was inline-sized alone
                break
            pending.pop(0)
            batch = [first]
            key = first.batch_key()
            if key is not None:
                for job in list(pending):
                    if len(batch) >= self.max_batch:
                        break
                    grown = self.predictor(first.variant, first.first_block, first.last_block, len(batch) + 1)
                    finish = time.monotonic() + grown
                    if grown > budget or first.deadline < finish:  # a bigger batch only takes longer
                        break
                    if job.batch_key() == key and _due_after(job, finish):
                        batch.append(job)
                        pending.remove(job)
                        cost = grown
            budget -= cost
            self._run_inline(batch)
        for job in pending:  # over the loop's share: the workers run them (and may batch them)
            try:
                self.queue.push(job)
            except Overloaded as error:
                _resolve(job, error=error)

    def _admit(self, job: Job) -> None:
        """Refuse at once (``Overloaded``, 429 + Retry-After) a job the queue ahead of it would
        make late: answering it later, or with nothing, helps nobody and costs compute. A job
        that may degrade is kept while its first exit still fits after the wait (it may then
        answer there); a job alone is never refused here (its own budget check answers it).
        EDF runs a new job with an earlier deadline before jobs already accepted: it is also
        refused when it would push one of those, which would otherwise fit, past its deadline
        (an accepted request is a promise; the newcomer can still go to another node).

        A job whose own run to its first possible answer is predicted (mean) to end past its
        deadline is refused at once too, alone or not (``RefusedBeforeStart``): run anyway, it
        would be refused before its last block after holding the unit for all the blocks before
        it — on the bandwidth-trace Pi, 30 ms of a 60 ms robot budget each time — and its
        client would learn it that much later."""
        now = time.monotonic()
        needed = job.answer_s = self._cost_to_answer(job)
        if now + needed > job.deadline:
            left_ms = max((job.deadline - now) * 1000, 0.0)
            raise RefusedBeforeStart(f"request {job.request_id}: blocks {job.first_block}-{job.last_block} of "
                                     f"{job.variant} need ~{needed * 1000:.1f} ms, {left_ms:.1f} ms left")
        own = job.predicted_s = needed if self._answer_block(job) == job.last_block else \
            self.predictor(job.variant, job.first_block, job.last_block, 1)
        workers = max(len(self._threads), 1)
        if not self.queue._heap and self.in_flight == 0:
            pending = self._inline_pending
            if not pending:
                return
            if max(other.deadline for other in pending) <= job.deadline:
                # only this turn's inline jobs are ahead, none due after this one: all of them run
                # before it and none after it (what the general case below finds, in one sum)
                self._refuse_if_late(job, now, sum(self._queued_cost(other) for other in pending) / workers)
                return
        with self.queue.condition:
            queued = [entry[2] for entry in sorted(self.queue._heap)]
        if self._inline_pending:  # this turn's inline jobs run before the queue's, EDF among them
            queued = sorted([*self._inline_pending, *queued], key=lambda other: other.deadline)
        # work that runs before this job: what running batches with an earlier deadline have
        # left, and the block every other running batch is in (it yields after that block)
        work = 0.0
        preempted: list[tuple[float, float]] = []  # (deadline, seconds left after the block) of those
        for running in list(self._running.values()):
            elapsed = now - running.block_started
            if not self.preemptive or running.deadline <= job.deadline:
                work += max(0.0, running.rest_s - elapsed)
            else:
                work += max(0.0, running.block_s - elapsed)
                preempted.append((running.deadline, max(0.0, running.rest_s - running.block_s)))
        for other in queued:
            if other.deadline > job.deadline:
                break
            work += self._queued_cost(other)
        wait = work / workers
        self._refuse_if_late(job, now, wait)
        later = [(other.deadline, self._queued_cost(other, to_answer=True), self._queued_cost(other))
                 for other in queued if other.deadline > job.deadline]
        later += [(deadline, left, left) for deadline, left in preempted]
        for deadline, to_answer, whole in sorted(later, key=lambda entry: entry[0]):
            before = now + work / workers + to_answer
            if before <= deadline < before + own / workers:
                raise Overloaded(f"request {job.request_id}: running it first would make an accepted request "
                                 f"miss its deadline", retry_after_s=round(max(wait + own / workers, 0.01), 3))
            work += whole

    def _refuse_if_late(self, job: Job, now: float, wait: float) -> None:
        """``Overloaded`` when ``wait`` s of work ahead leave the job too little of its slack."""
        slack = job.deadline - now - self._cost_to_answer(job, tail=True)
        if wait > slack * min(1.0, job.wait_share):
            share = "" if job.wait_share >= 1.0 else f" (it may wait {job.wait_share:.0%} of its slack)"
            raise Overloaded(f"request {job.request_id}: {wait * 1000:.0f} ms of queued work ahead leaves no time "
                             f"to run it before its deadline{share}", retry_after_s=round(max(wait, 0.01), 3))

    def _queued_cost(self, job: Job, *, to_answer: bool = False) -> float:
        """A waiting job's predicted compute (``to_answer``: to its first possible answer,
        ``_cost_to_answer``): for this turn's inline jobs, the price admission gave it moments
        ago (8 of them arriving together were priced 36 times); for the queue's, priced again
        now (it may have waited while the estimates moved)."""
        known = job.answer_s if to_answer else job.predicted_s
        if known is not None and job in self._inline_pending:
            return known
        if to_answer:
            return self._cost_to_answer(job)
        return self.predictor(job.variant, job.first_block, job.last_block, 1)

    def _cost_to_answer(self, job: Job, *, tail: bool = False) -> float:
        """Seconds from the job's start to its first possible answer: its first exit when it
        may degrade, else its whole range; ``tail``: the p90 of that, not the mean."""
        last = self._answer_block(job)
        return (self.tail_predictor if tail else self.predictor)(job.variant, job.first_block, last, 1)

    def _answer_block(self, job: Job) -> int:
        """The block after which the job can first answer (``_cost_to_answer`` runs to it)."""
        return self._first_exit(job) if job.allow_degrade else job.last_block

    def _first_exit(self, job: Job) -> int:
        """The first block of the job's range after which this node can answer: the earliest
        exit head it holds there that the job may degrade to (``min_exit``), else the range's
        last block (a middle segment of a chain has no exit of its own and must run all of
        its blocks)."""
        key = (job.variant, job.first_block, job.last_block, job.min_exit)
        known = self._first_exits.get(key)
        if known is not None:  # the loaded heads do not change: once per range
            return known
        model = self.models.get(job.variant)
        earliest = max(job.first_block, job.min_exit if job.min_exit is not None else job.first_block)
        exits = [block for block in (model.heads if model is not None else ())
                 if earliest <= block <= job.last_block]
        if len(self._first_exits) >= 1024:  # ranges come from peers' plans: bounded
            self._first_exits.clear()
        first = self._first_exits[key] = min(exits, default=job.last_block)
        return first

    def forget_arrivals(self) -> None:
        """Warm-up jobs arrive back to back: they must not make the first requests wait for a batch."""
        self._arrivals.clear()

    def close(self) -> None:
        """Stop the workers; anything still queued is answered with ``Draining``."""
        with self.queue.condition:
            self._closed = True
            leftovers = self.queue.drain_locked()
            self.queue.condition.notify_all()
        for job in leftovers:
            _resolve(job, error=Draining("node shut down before this request ran"))
        for thread in self._threads:
            thread.join(timeout=5)

    # ---- worker side -----------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        with self.queue.condition:
            while not self._closed and len(self.queue) == 0:
                self.queue.condition.wait(timeout=0.5)
            if self._closed:
                return None
            first = self.queue.pop_locked()
            key = first.batch_key()
            if key is None or self.max_batch <= 1:
                return [first]
            if not self._arrivals_are_dense():
                return self._grow_batch_locked([first], key)
            batch = [first]
            window_end = time.monotonic() + self.batch_window_s
            while True:
                batch = self._grow_batch_locked(batch, key)
                now = time.monotonic()
                predicted = self.predictor(first.variant, first.first_block, first.last_block, len(batch) + 1)
                if len(batch) >= self.max_batch or now >= window_end:
                    break
                # wait a little for compatible arrivals, if the first job's slack allows it
                slack = first.deadline - now - predicted
                if slack <= 0:
                    break
                self.queue.condition.wait(timeout=min(window_end - now, slack))
            return batch

    def _grow_batch_locked(self, batch: list[Job], key: tuple) -> list[Job]:
        """Add queued compatible jobs one at a time while the grown batch still finishes
        before every member's deadline (a batch of n runs longer than a batch of 2: each
        addition is checked at its own size). ``batch[0]`` has the earliest deadline (EDF)."""
        first = batch[0]
        while len(batch) < self.max_batch:
            finish = time.monotonic() + self.predictor(first.variant, first.first_block, first.last_block,
                                                       len(batch) + 1)
            if first.deadline < finish:
                break
            taken = self.queue.take_compatible_locked(key, 1, functools.partial(_due_after, finish=finish))
            if not taken:
                break
            batch = [*batch, *taken]
        return batch

    def _arrivals_are_dense(self) -> bool:
        """Waiting for a batch to fill only pays when requests arrive closer than the window:
        a lone request must not pay the window as extra latency."""
        arrivals = list(self._arrivals)
        if len(arrivals) < 3:
            return False
        mean_gap = (arrivals[-1] - arrivals[0]) / (len(arrivals) - 1)
        return mean_gap < self.batch_window_s

    def _work(self) -> None:
        if self.threads is not None:  # intra-op threads are per thread with OpenMP: set them here
            torch.set_num_threads(self.threads)
        with torch.inference_mode():  # for the thread's life: blocks run with ModelSlice.forward_block
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._run_answered(batch)

    def _run_answered(self, batch: list[Job], inline: bool = False) -> None:
        """Run a batch (on a worker, or inline on the loop) with the accounting admission reads
        (in flight, what the running batch has left) and an answer for every job, failures
        included."""
        self.in_flight += len(batch)
        started = time.monotonic()
        if self.on_batch is not None and batch[0].block_timer is None:
            self.on_batch(len(batch))
        try:
            self._run(batch, inline)
        except Exception as error:  # noqa: BLE001 - every accepted job gets an answer
            self._running.pop(threading.get_ident(), None)  # before the answers (``_run``)
            failure = error if isinstance(error, P2PError) else \
                P2PError(f"execution failed: {type(error).__name__}: {error}")
            for job in batch:
                _resolve(job, error=failure)
        finally:
            self._running.pop(threading.get_ident(), None)
            self.busy_seconds += time.monotonic() - started
            self.in_flight -= len(batch)

    def _run(self, batch: list[Job], inline: bool = False) -> None:
        """``inline``: on the event loop's thread, where nothing can be admitted or queued while
        it runs: no running-batch record for admission, no preemption check between blocks."""
        head = batch[0]
        model = self.models[head.variant]
        model.check_range(head.first_block, head.last_block)  # once: forward_block does not check
        started = time.monotonic()
        queue_ms = [(started - job.enqueued_at) * 1000 for job in batch]
        size = len(batch)
        hidden = model.prepare(torch.cat([job.hidden for job in batch]) if size > 1 else head.hidden)
        passed_logits: torch.Tensor | None = None  # logits of the last exit head computed
        passed_exit: int | None = None  # the last exit passed (its head runs only if needed)
        passed_hidden: torch.Tensor | None = None
        resumed = PassedExit.joined(batch) if head.passed is not None else None  # a preempted run's
        if resumed is not None:
            passed_logits, passed_exit, passed_hidden = resumed.logits, resumed.block, resumed.hidden
        deadline = min(job.deadline for job in batch) if size > 1 else head.deadline
        block_seconds = self.block_predictor(head.variant, head.first_block, head.last_block, size)
        rest = 0.0 if inline else sum(block_seconds)
        run_times: list[float] | None = [] if head.block_timer is None and self.on_run is not None else None
        timer = None if run_times is not None else head.block_timer or self.on_block
        pad = head.emulate and self.slowdown() > 1.0  # an unslowed unit skips _pad (and its reads) for the run
        first_block = head.first_block
        try:
            worker = threading.get_ident()
            finished_exit: int | None = None
            heads = model.heads
            for index, predicted in zip(range(head.first_block, head.last_block + 1), block_seconds, strict=True):
                now = time.monotonic()
                if now + predicted > deadline:
                    # the run ends here: no record of it may outlive its answers (a job admitted
                    # the moment after would count this block's work, which will never run, as ahead)
                    self._running.pop(worker, None)
                    if passed_logits is None and passed_exit is not None and passed_hidden is not None:
                        passed_logits = model.forward_head(passed_exit, passed_hidden)  # degrading needs it now
                    if size > 1:
                        self._run_members_alone(batch, hidden, index, queue_ms, passed_logits, passed_exit, started,
                                                inline)
                    else:
                        self._answer_late(head, passed_logits, passed_exit, index, started, queue_ms[0],
                                          ran_nothing=index == head.first_block and not head.ran_blocks)
                    return
                if not inline:
                    self._running[worker] = RunningBatch(now, predicted, rest, deadline)
                    rest -= predicted
                block_started = time.perf_counter()
                hidden = model.forward_block(index, hidden)
                real = time.perf_counter() - block_started
                if pad:
                    self._pad(real, (head.variant, index, size))
                if run_times is not None:
                    run_times.append(time.perf_counter() - block_started if pad else real)
                elif timer is not None:
                    timer(head.variant, index, real, time.perf_counter() - block_started if pad else real, size)
                if index in heads:
                    if index != head.exit_block and head.confidence_threshold is None:
                        # an exit passed on the way: its head runs only if the request must degrade to it
                        if head.min_exit is None or index >= head.min_exit:  # not one too inaccurate to answer with
                            passed_logits, passed_exit = None, index
                            passed_hidden = hidden if head.allow_degrade else None
                    else:
                        passed_logits, passed_exit = model.forward_head(index, hidden), index
                        if index == head.exit_block:
                            finished_exit = index
                            break
                        if head.confidence_threshold is not None:
                            confidence = torch.softmax(passed_logits, -1).amax(-1)
                            if bool((confidence >= head.confidence_threshold).all()):
                                finished_exit = index  # confident early exit
                                break
                if not inline and index < head.last_block and self._urgent_job_waits(deadline):
                    passed = None if passed_exit is None else PassedExit(passed_exit, passed_logits, passed_hidden)
                    self._running.pop(worker, None)  # its jobs are queued again: counted there, not twice
                    self._preempt(batch, hidden, index + 1, queue_ms, started, passed)
                    return
            compute_ms = (time.monotonic() - started) * 1000
            self._running.pop(worker, None)  # before the answers, as above
            # before the answers: a client that reads /metrics next sees the run
            self._report_run(head.variant, first_block, run_times, size)
            last_run = finished_exit if finished_exit is not None else head.last_block
            finished_logits = passed_logits if finished_exit is not None else None  # an exit sets both
            # on the CPU only: a device's logits stay there for a hop that sends them on (no
            # copy or sync here), and a many-class row stays a tensor for numpy; a local answer
            # reads those through ``logits``
            values = (logit_rows(finished_logits) if finished_logits is not None and finished_logits.is_cpu
                      and finished_logits.shape[-1] <= SMALL_ANSWER_CLASSES else None)
            _resolve_batch([(job, JobResult(
                batch_hidden=hidden, batch_logits=finished_logits, row=-1 if size == 1 else position,
                logit_values=None if values is None else values[position],
                exit_block=finished_exit, last_block_run=last_run, degraded=False, queue_ms=queue_ms[position],
                compute_ms=compute_ms + job.compute_s_before * 1000, batch_size=size), None)
                for position, job in enumerate(batch)])
        finally:  # a run cut short (late, preempted, failed) reports the blocks it ran too
            self._report_run(head.variant, first_block, run_times, size)

    def _report_run(self, variant: str, first_block: int, run_times: list[float] | None, size: int) -> None:
        """Hand a run's block times to ``on_run`` once (then forget them: reported is reported)."""
        if run_times and self.on_run is not None:
            self.on_run(variant, first_block, run_times[:], size)
            run_times.clear()

    def _urgent_job_waits(self, deadline: float) -> bool:
        """A queued job is due before the running batch and no other worker is free to take it."""
        if not self.preemptive or len(self._running) < len(self._threads):
            return False
        earliest = self.queue.earliest_deadline()
        return earliest is not None and earliest < deadline

    def _preempt(self, batch: list[Job], hidden: torch.Tensor, next_block: int, queue_ms: list[float],
                 started: float, passed: PassedExit | None) -> None:
        """Put a batch back in the queue after a block, each job carrying its activation, its
        compute so far and the exit it passed: it resumes at ``next_block``, under EDF like
        any queued job (and may batch again with its siblings)."""
        now = time.monotonic()
        lone = len(batch) == 1
        for position, job in enumerate(batch):
            job.hidden = hidden if lone else hidden[position:position + 1]
            job.sample_shape = None  # another block's activation
            job.ran_blocks = True
            job.first_block = next_block
            job.enqueued_at = now - queue_ms[position] / 1000  # its wait so far counts on
            job.compute_s_before += now - started
            job.passed = passed if passed is None or lone else passed.rows(position, position + 1)
        for job in batch:
            self.queue.push(job, resumed=True)
        self.preemptions += 1

    def _answer_late(self, job: Job, logits: torch.Tensor | None, exit_block: int | None, index: int,
                     started: float, queue_ms: float, ran_nothing: bool = False) -> None:
        """The next block would miss the deadline: degrade to the last exit passed, or refuse
        (``RefusedBeforeStart`` when none of the job's blocks ran: another node may make it)."""
        if job.allow_degrade and logits is not None and exit_block is not None:
            _resolve(job, result=JobResult(
                batch_hidden=logits, batch_logits=logits, exit_block=exit_block, last_block_run=exit_block,
                degraded=True, queue_ms=queue_ms, compute_ms=(time.monotonic() - started + job.compute_s_before) * 1000,
                batch_size=1))
            return
        left_ms = (job.deadline - time.monotonic()) * 1000
        refusal = RefusedBeforeStart if ran_nothing else DeadlineExceeded
        _resolve(job, error=refusal(
            f"request {job.request_id}: block {index} of {job.variant} cannot finish within the "
            f"{max(left_ms, 0.0):.1f} ms left"))

    def _run_members_alone(self, batch: list[Job], hidden: torch.Tensor, index: int, queue_ms: list[float],
                           passed_logits: torch.Tensor | None = None, passed_exit: int | None = None,
                           started: float | None = None, inline: bool = False) -> None:
        """A batch whose tightest member can no longer wait for it: go on one by one, EDF. A
        member whose next block would now be late answers at the exit the batch passed (when
        it may degrade), as it would have alone."""
        rows = {id(job): position for position, job in enumerate(batch)}
        for position, job in enumerate(batch):
            job.hidden = hidden[position:position + 1]
            job.sample_shape = None  # another block's activation
            job.ran_blocks = job.ran_blocks or index > job.first_block
            job.first_block = index
            job.enqueued_at = time.monotonic() - queue_ms[position] / 1000
            job.passed = None if passed_exit is None else PassedExit(
                passed_exit, None if passed_logits is None else passed_logits[position:position + 1], None)
        for job in sorted(batch, key=lambda job: job.deadline):
            row = rows[id(job)]
            late = time.monotonic() + self.predictor(job.variant, index, index, 1) > job.deadline
            if late and passed_logits is not None and job.allow_degrade:
                self._answer_late(job, passed_logits[row:row + 1], passed_exit, index,
                                  started if started is not None else time.monotonic(), queue_ms[row])
            else:
                self._run([job], inline)

    def _pad(self, elapsed: float, key: tuple[str, int, int]) -> None:
        """Emulate a slower device: real compute, then sleep (never spin) until the device's
        time for the block has passed.

        The device's time is ``factor`` x the block's calibrated time on this host (its
        offline profile, which is also what the planner predicts with), a batch of n costing
        the ``1 + BATCH_EFFICIENCY (n - 1)`` singles the predictor assumes (the first run of a
        new batch size is cold: x40 of it made batches late at random); without a profile,
        ``factor`` x the fastest this block (and batch size) ever ran here — never x this run's
        time: on a shared host another process's burst (or a cold first run) stretches the real
        compute, and multiplying that stretch by a x40 profile would turn host noise into a
        slow device. A run slower than the device's time is not padded at all."""
        factor = self.slowdown()
        if factor <= 1.0:
            return
        variant, block, batch = key
        calibrated = self.calibrated_s.get((variant, block))
        if calibrated is not None:
            left = calibrated * factor * (1 + BATCH_EFFICIENCY * (batch - 1)) - elapsed
            if left > 0:
                time.sleep(left)
            return
        fastest = min(self._fastest.get(key, elapsed), elapsed)
        self._fastest[key] = fastest
        left = fastest * factor - elapsed
        if left > 0:
            time.sleep(left)


FLUSH_BUDGET_FACTOR = 3.0
"""A flush may run this many times ``inline_max_s`` of predicted compute on the loop (each job
in it inline-sized alone). Why more than one: a flush serves several requests at once, and
what does not fit goes to the worker threads, which fight the loop for the GIL on a busy
host — with a flush held to one ``inline_max_s`` (2 ms), 8 clients on eager digits-cnn-w1
(0.87 ms alone, 1.7 ms for 8) sent nine jobs in ten to the workers after an inline batch of
one, and the node served 0.8x the floor's requests/s; with three, it ran batches of 7-8 on
the loop and served more than the floor."""
QUIET_TURNS = 2
"""Loop turns without a new inline job after which a pending flush stops waiting turn by turn
(``_flush_waits``)."""


def _each_block(predictor: Predictor, variant: str, first: int, last: int, batch_size: int) -> list[float]:
    return [predictor(variant, index, index, batch_size) for index in range(first, last + 1)]


def _due_after(job: Job, finish: float) -> bool:
    return job.deadline >= finish


def _resolve(job: Job, result: JobResult | None = None, error: BaseException | None = None) -> None:
    _resolve_batch([(job, result, error)])


Answer = tuple[Job, JobResult | None, BaseException | None]


def _resolve_batch(answers: list[Answer]) -> None:
    """Settle jobs' futures (a result, or the error when there is one) with one wake-up per
    event loop, not one per job (a thread-safe call writes to the loop's self-pipe); on the
    loop's own thread (an inline run), at once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Answer]] = {}
    for answer in answers:
        if answer[0].future is not None and answer[0].loop is not None:
            by_loop.setdefault(answer[0].loop, []).append(answer)
    for loop, group in by_loop.items():
        settle = functools.partial(_settle, group)
        if _on_loop_thread(loop):
            settle()
            continue
        with contextlib.suppress(RuntimeError):  # a closed loop: the node is gone, nobody waits
            loop.call_soon_threadsafe(settle)


def _settle(answers: list[Answer]) -> None:
    for job, result, error in answers:
        future = job.future
        if future is None or future.done():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


def _on_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
