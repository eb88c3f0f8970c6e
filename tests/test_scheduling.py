"""Fair turns between sessions (avatar.runtime.scheduling) and the language model's slot table (avatar.models.llm.slots)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from avatar.models.llm.slots import SlotTable
from avatar.runtime.scheduling import FairQueue, SessionGone


async def _settle():
    for _ in range(5):
        await asyncio.sleep(0)


async def _run_jobs(queue: FairQueue, jobs: list[tuple[str, str]], *, hold: asyncio.Event) -> list[tuple[str, str]]:
    """Queue ``jobs`` (session, kind) behind a job that holds the only turn; return the order they ran in."""
    order: list[tuple[str, str]] = []

    async def job(session, kind):
        async with queue.turn(session, kind):
            order.append((session, kind))

    async def holder():
        async with queue.turn("holder", queue.kinds[0]):
            await hold.wait()

    first = asyncio.create_task(holder())
    await _settle()
    tasks = [asyncio.create_task(job(s, k)) for s, k in jobs]
    await _settle()
    hold.set()
    await asyncio.gather(first, *tasks)
    return order


async def test_urgent_kinds_go_first():
    queue = FairQueue(1, ("final", "speculative", "partial"))
    order = await _run_jobs(queue, [("a", "partial"), ("b", "speculative"), ("c", "final")], hold=asyncio.Event())
    assert order == [("c", "final"), ("b", "speculative"), ("a", "partial")]


async def test_sessions_take_turns_so_a_backlog_does_not_starve_others():
    queue = FairQueue(1, ("final",))
    jobs = [("noisy", "final")] * 6 + [("polite", "final")]
    order = await _run_jobs(queue, jobs, hold=asyncio.Event())
    assert [s for s, _ in order].index("polite") == 1  # right after the noisy session's first job
    assert queue.running == 0 and queue.queued == 0


async def test_forget_drops_waiting_jobs_and_cancel_leaves_the_queue():
    queue = FairQueue(1, ("final",))
    hold = asyncio.Event()

    async def holder():
        async with queue.turn("holder"):
            await hold.wait()

    async def job(session):
        async with queue.turn(session):
            return session

    first = asyncio.create_task(holder())
    await _settle()
    gone = [asyncio.create_task(job("gone")) for _ in range(3)]
    dropped = asyncio.create_task(job("speculation"))
    kept = asyncio.create_task(job("kept"))
    await _settle()
    assert queue.queued == 5
    assert queue.forget("gone") == 3
    dropped.cancel()
    await _settle()
    assert queue.queued == 1 and queue.queued_for("kept") == 1
    hold.set()
    assert await kept == "kept"
    await first
    for task in gone:
        with pytest.raises(SessionGone):
            await task
    assert dropped.cancelled() and queue.running == 0 and queue.queued == 0


async def test_capacity_bounds_concurrent_turns():
    queue = FairQueue(2)
    inside, peak = 0, 0

    async def job(i):
        nonlocal inside, peak
        async with queue.turn(f"s{i % 3}"):
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(job(i) for i in range(9)))
    assert peak == 2 and queue.running == 0


async def test_promote_moves_a_speculation_ahead():
    queue = FairQueue(1, ("final", "speculative"))
    hold = asyncio.Event()
    order = []

    async def holder():
        async with queue.turn("holder"):
            await hold.wait()

    async def job(session, kind):
        async with queue.turn(session, kind):
            order.append(session)

    first = asyncio.create_task(holder())
    await _settle()
    tasks = [asyncio.create_task(job("other", "speculative")), asyncio.create_task(job("me", "speculative"))]
    await _settle()
    queue.promote("me", "speculative", "final")
    hold.set()
    await asyncio.gather(first, *tasks)
    assert order == ["me", "other"]


async def test_a_reserved_turn_keeps_a_final_transcription_from_waiting_for_speculative_ones():
    queue = FairQueue(2, ("final", "speculative", "partial"), reserved=1)
    hold = asyncio.Event()
    running: list[tuple[str, str]] = []

    async def job(session, kind):
        async with queue.turn(session, kind):
            running.append((session, kind))
            await hold.wait()

    chatter = [asyncio.create_task(job(f"noisy{i}", kind))
               for i, kind in enumerate(["speculative", "speculative", "partial"])]
    await _settle()
    assert running == [("noisy0", "speculative")] and queue.queued == 2  # one turn stays free
    final = asyncio.create_task(job("polite", "final"))
    await _settle()
    assert running[-1] == ("polite", "final") and queue.running == 2
    hold.set()
    await asyncio.gather(final, *chatter)
    assert len(running) == 4 and queue.running == 0 and queue.queued == 0
    with pytest.raises(ValueError):
        FairQueue(1, ("final", "partial"), reserved=1)  # nothing left for the other kinds


def test_slot_table_keeps_a_conversation_on_its_slot():
    table = SlotTable(2)
    a, _ = table.acquire("a")
    b, _ = table.acquire("b")
    assert a != b
    table.release(a)
    table.release(b)
    assert table.acquire("a")[0] == a and table.acquire("b")[0] == b
    table.release(a)
    table.release(b)
    table.forget("a")
    assert table.acquire("c")[0] == a  # the ended conversation's slot goes first
    assert table.owner(a) == "c"


def test_a_conversation_waits_for_its_own_slot_without_holding_up_others():
    table = SlotTable(2)
    a, _ = table.acquire("a")  # e.g. a cancelled reply, its prompt still being read
    got = {}
    waiter = threading.Thread(target=lambda: got.setdefault("a", table.acquire("a")))
    waiter.start()
    time.sleep(0.1)
    assert "a" not in got  # the free slot holds none of a's prompt: a waits for its own
    b, _ = table.acquire("b")  # and b, behind a in line, is served at once
    assert b != a
    table.release(a)
    waiter.join(5)
    assert got["a"][0] == a


def test_slot_table_waits_in_order_and_gives_up_on_cancel():
    table = SlotTable(1)
    slot, _ = table.acquire("a")
    cancel = threading.Event()
    results = {}

    def wait(name, event=None):
        results[name] = table.acquire(name, event)

    waiter = threading.Thread(target=wait, args=("b",))
    cancelled = threading.Thread(target=wait, args=("c", cancel))
    waiter.start()
    cancelled.start()
    cancel.set()
    cancelled.join(5)
    assert results["c"] is None and table.waiting == 1
    table.release(slot)
    waiter.join(5)
    assert results["b"][0] == slot and results["b"][1] > 0


async def test_runtime_routes_sessions_through_fair_turns(tmp_path):
    import numpy as np

    from avatar.config import Config
    from avatar.conversation.memory import MemoryStore
    from avatar.runtime.services import Services
    from tests.fakes import WordLLM, fake_models

    llm = WordLLM(reply="hi there", delay=0)
    rt = Services(Config(), fake_models(llm=llm), MemoryStore(tmp_path / "m.sqlite3"))
    try:
        pieces = [p async for p in rt.replies.stream_chat([{"role": "user", "content": "x"}], threading.Event(), session="s1")]
        assert "".join(pieces).strip() == "hi there" and llm.conversations == ["s1"]
        speech = np.ones(16000, np.float32) * 0.1
        assert await rt.recognition.transcribe(speech, kind="final", session="s1")  # FixedASR's text
        assert await rt.recognition.transcribe(speech, kind="partial", session="s1")  # an idle machine: partials run
        # Another session's reply being generated: a partial would take its CPU, so it is skipped.
        replying = asyncio.Event()

        async def reply():
            async with rt.replies.queue.turn("s2"):
                await replying.wait()

        generating = asyncio.create_task(reply())
        await _settle()
        assert await rt.recognition.transcribe(speech, kind="partial", session="s1") is None
        assert await rt.recognition.transcribe(speech, kind="final", session="s1")
        replying.set()
        await generating
        # Both ASR turns busy: a partial is skipped, a final waits, and goes when its session does.
        hold = asyncio.Event()

        async def occupy():
            async with rt.recognition.queue.turn("other", "final"):
                await hold.wait()

        holders = [asyncio.create_task(occupy()) for _ in range(rt.recognition.queue.capacity)]
        await _settle()
        assert await rt.recognition.transcribe(speech, kind="partial", session="gone") is None
        waiting = asyncio.create_task(rt.recognition.transcribe(speech, kind="final", session="gone"))
        await _settle()
        assert rt.recognition.queue.queued_for("gone") == 1
        rt.forget_session("gone")
        assert await waiting is None and rt.recognition.queue.queued == 0
        hold.set()
        await asyncio.gather(*holders)
    finally:
        rt.close()


async def test_a_first_clause_is_synthesised_before_other_replies_later_clauses(tmp_path):
    from avatar.config import Config
    from avatar.conversation.memory import MemoryStore
    from avatar.runtime.services import Services
    from tests.fakes import ToneTTS, fake_models

    started: list[str] = []
    gate = threading.Event()

    class GatedTTS(ToneTTS):
        def synthesize(self, text, voice=None):
            started.append(text)
            gate.wait(10)
            yield from super().synthesize(text)

    rt = Services(Config(), fake_models(tts=GatedTTS()), MemoryStore(tmp_path / "m.sqlite3"))
    try:
        holds = [asyncio.Event() for _ in range(rt.speech.queue.capacity)]

        async def occupy(hold):
            async with rt.speech.queue.turn("busy", "later"):
                await hold.wait()

        holders = [asyncio.create_task(occupy(h)) for h in holds]
        await _settle()

        async def say(text: str, session: str, first: bool) -> None:
            async for _ in rt.speech.synthesize(text, threading.Event(), session=session, first=first):
                pass

        later = asyncio.create_task(say("and then some more", "speaking", False))
        await _settle()
        first = asyncio.create_task(say("Hello!", "starting", True))
        await _settle()
        assert rt.speech.queue.queued == 2
        holds[0].set()  # one turn frees up: the first clause, queued last, takes it
        await _settle()
        assert rt.speech.queue.queued_for("speaking") == 1 and rt.speech.queue.queued_for("starting") == 0
        gate.set()
        await asyncio.wait_for(first, 10)
        for hold in holds:
            hold.set()
        await asyncio.gather(*holders, later)
        assert started == ["Hello!", "and then some more"]
    finally:
        gate.set()
        rt.close()


def test_background_work_takes_only_free_slots_and_never_ahead_of_a_waiter():
    table = SlotTable(3)
    first = table.acquire("a")
    assert first is not None
    taken = table.take_free()
    assert sorted(taken) == sorted({0, 1, 2} - {first[0]})
    assert table.take_free() == []  # all busy now
    for slot in taken:
        table.release(slot)
    # "a" comes back while its slot is busy: it waits for that slot although two others are free, and
    # background work then takes none (it would not delay "a", but it never competes with a waiter).
    again = threading.Thread(target=table.acquire, args=("a",))
    again.start()
    time.sleep(0.2)
    assert table.waiting == 1 and table.take_free() == []
    table.release(first[0])
    again.join(5)
    assert not again.is_alive() and table.waiting == 0
    assert len(table.take_free()) == 2


async def test_a_cancelled_transcription_keeps_its_turn_until_its_thread_is_free(tmp_path):
    """A worker thread cannot be stopped: the turn of a speculation the user talked over stays taken while
    its thread runs on, so the next job waits in the fair order instead of inside the thread pool."""
    import numpy as np

    from avatar.config import Config
    from avatar.conversation.memory import MemoryStore
    from avatar.runtime.services import Services
    from tests.fakes import FixedASR, fake_models

    gate = threading.Event()

    class GatedASR(FixedASR):
        def transcribe(self, audio, *, language=None):
            gate.wait(10)
            return super().transcribe(audio, language=language)

    rt = Services(Config(), fake_models(asr=GatedASR(delay=0)), MemoryStore(tmp_path / "m.sqlite3"))
    try:
        speech = np.ones(16000, np.float32) * 0.1
        dropped = asyncio.create_task(rt.recognition.transcribe(speech, kind="speculative", session="s1"))
        await asyncio.sleep(0.1)  # running in its thread
        dropped.cancel()
        await asyncio.sleep(0.1)
        assert not dropped.done() and rt.recognition.queue.running == 1
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(dropped, 10)
        assert rt.recognition.queue.running == 0
        assert await rt.recognition.transcribe(speech, kind="final", session="s1") == "hello there"
    finally:
        gate.set()
        rt.close()


async def test_end_of_turn_questions_take_turns_and_a_stale_one_leaves_the_queue(tmp_path):
    import numpy as np

    from avatar.config import Config
    from avatar.conversation.memory import MemoryStore
    from avatar.runtime.services import Services
    from tests.fakes import fake_models

    gate = threading.Event()
    asked: list[int] = []

    class GatedTurnModel:
        def probability(self, audio):
            asked.append(len(audio))
            gate.wait(10)
            return 0.9

    models = fake_models()
    models.turn_end = GatedTurnModel()
    rt = Services(Config(), models, MemoryStore(tmp_path / "m.sqlite3"))
    try:
        def ask(samples: int, session: str) -> asyncio.Task:
            return asyncio.create_task(rt.recognition.turn_end_probability(np.zeros(samples, np.float32), session=session))

        running = ask(100, "chatty")
        await asyncio.sleep(0.1)
        stale = [ask(200 + i, "chatty") for i in range(3)]  # pauses that ended while the model was busy
        await _settle()
        polite = ask(300, "polite")
        await _settle()
        assert rt.recognition.turn_end_queue.queued == 4
        for task in stale:
            task.cancel()
        await _settle()
        assert rt.recognition.turn_end_queue.queued == 1 and rt.recognition.turn_end_queue.queued_for("polite") == 1
        gate.set()
        assert await asyncio.wait_for(polite, 10) == 0.9 and await running == 0.9
        assert asked == [100, 300]  # the stale questions were never put to the model
    finally:
        gate.set()
        rt.close()
