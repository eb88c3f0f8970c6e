"""Chat LLM on llama.cpp's own server, run in-process by the prebuilt ``xllamacpp`` wheel.

Why this backend: the wheel installs without a compiler and its CPU build targets AVX2, so it runs on any
x86-64 CPU (llama-cpp-python's native build segfaults in the AMX kernels of AVX-512/AMX Xeons). The
server batches concurrent requests (continuous batching over ``slots`` parallel KV caches), so several
sessions generate at once: 4 streams of the default 0.5B model gave 17.6 tok/s together against 12.8 tok/s
for one on a 2-core VM (1 generation thread). The chat template is read from the GGUF.

Each conversation keeps a slot (``avatar.models.llm.slots``): its next turn evaluates only the new messages.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import secrets
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

from avatar.config import LLMConfig
from avatar.errors import ConfigError, ModelMissingError, StageError
from avatar.models.llm.base import lower_thread_priority, plain_messages
from avatar.models.llm.slots import SlotTable
from avatar.models.tiers import gpu_present
from avatar.models.weights import llm_gguf

log = logging.getLogger(__name__)

INSTALL = "pip install xllamacpp==2026.10.11549"
CUDA_INSTALL = ("pip install xllamacpp --force-reinstall --index-url "
                "https://xorbitsai.github.io/xllamacpp/whl/cu124 (the CUDA build of the same backend)")
# The server's threads (the batching loop and its compute threads) inherit this from the thread that
# starts them: frames and audio are due within a tenth of a second while a reply is read out over
# seconds, so generation yields to them when the CPU is short (the same 3:1 share the runtime gives its
# other LLM threads).
NICE = 5
# llama.cpp can keep the prompts of slots it reuses in host memory (its default: up to 8 GiB). Off: each
# conversation keeps its own slot, and a new conversation reuses the system prompt already in the slot it
# gets. With 256 MiB allowed, the 30-minute 4-client soak's resident memory grew ~20 MB a minute in
# malloc arenas (+9% by minute 9; a saved 2,500-token prompt of the 0.5B model is ~60 MB).
CACHE_RAM_MIB = 0
# At exit, how long running generations get to stop (they stop at their next token, or after the prompt
# they are evaluating). A request still inside llama.cpp when the interpreter finalises crashes it
# (SIGSEGV on exit, seen with SIGTERM during a reply).
CLOSE_WAIT_S = 10.0
HOLD_POLL_S = 0.05  # how often a paused reply asks whether to go on
_END = object()


class XLlamaCppLLM:
    """One llama.cpp server per process, shared by every session; ``slots`` replies generate at once."""

    can_pause = True  # stream_chat takes ``hold`` (avatar.conversation.pacing)

    def __init__(self, cfg: LLMConfig):
        try:
            import xllamacpp
        except ImportError:
            raise ModelMissingError(f"the xllamacpp backend needs the xllamacpp package. Fix: {INSTALL}") from None
        if cfg.slots < 1:
            raise ConfigError(f"llm.slots must be at least 1, got {cfg.slots}")
        if cfg.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"llm.device must be 'cpu', 'cuda' or 'auto', got '{cfg.device}'")
        gpu = cfg.device != "cpu" and gpu_present()
        if cfg.device == "cuda" and not gpu:
            raise ConfigError(f"llm.device is 'cuda' but the installed xllamacpp sees no GPU. Fix: {CUDA_INSTALL}, "
                              "or set llm.device = \"cpu\"")
        self.path = llm_gguf(cfg.model)
        self.device = "cuda" if gpu else "cpu"
        self.context_tokens = cfg.context_tokens
        self.max_concurrent = cfg.slots
        self._slots = SlotTable(cfg.slots)
        self._api_key = secrets.token_urlsafe(24)
        self.last_timings: dict[str | None, dict] = {}  # per conversation: llama.cpp's timings of its last reply
        self._closing = threading.Event()
        self._running: set[threading.Thread] = set()

        params = xllamacpp.CommonParams()
        params.model.path = str(self.path)
        params.n_parallel = cfg.slots
        params.n_ctx = cfg.context_tokens * cfg.slots  # split evenly: each slot holds one conversation
        params.cache_prompt = True
        params.cont_batching = True
        params.cache_ram_mib = CACHE_RAM_MIB
        params.cpuparams.n_threads = cfg.n_threads
        params.cpuparams_batch.n_threads = max(cfg.n_threads, cfg.n_threads_batch)
        params.n_gpu_layers = cfg.gpu_layers if gpu else 0
        # On the CPU flash attention is off: llama.cpp's "auto" turns it on, and its CPU kernel is the slower one
        # for this model. Six turns after a 1,085-token system prompt (the 0.5B, one thread, 2-core AMD EPYC,
        # 2026-12-02, twice each): prompt evaluation 33.8-34.6 ms a token with it, 25.3 without; generation
        # 59.6-60.8 against 55.7-56.1 ms a token. With a 121-token system prompt: 22.3-22.6 against 21.2-21.5 and
        # 49.3-50.3 against 47.3-47.8. So a knowledge folder in the system prompt costs far less per token without
        # it. CUDA keeps "auto".
        if not gpu:
            params.flash_attn_type = xllamacpp.llama_flash_attn_type.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if cfg.draft_model:
            params.speculative.types = [xllamacpp.common_speculative_type.COMMON_SPECULATIVE_TYPE_DRAFT_SIMPLE]
            params.speculative.draft.mparams.path = str(llm_gguf(cfg.draft_model))
            params.speculative.draft.n_gpu_layers = params.n_gpu_layers
        params.verbosity = -1  # llama.cpp logs every request otherwise; errors reach the caller instead
        # The in-process server also listens on a random localhost port; only this process knows the key
        # (it uses that port for /tokenize, which needs no slot).
        params.api_keys = [self._api_key]
        params.n_threads_http = 1
        # Slot save/restore (localhost, behind the key): prime_slots evaluates the system prompt once and
        # copies it into the other slots (a 400-token prompt: 2.5 ms to save, 1 ms to restore).
        self._slot_files = tempfile.mkdtemp(prefix="avatar-llm-slots-")
        params.slot_save_path = self._slot_files
        params.endpoint_slots = True
        box: dict = {}

        def start() -> None:
            lower_thread_priority(NICE)
            try:
                box["server"] = xllamacpp.Server(params)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the loading thread below
                box["error"] = exc

        starter = threading.Thread(target=start, name="llm-start")
        starter.start()
        starter.join()
        if "error" in box:
            shutil.rmtree(self._slot_files, ignore_errors=True)
            raise ModelMissingError(f"cannot load GGUF model {self.path}: {box['error']}") from None
        self.server = box["server"]
        self._url = self.server.listening_address.rstrip("/")
        self._tokenize_url = self._url + "/tokenize"
        self._http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never via a proxy
        atexit.register(self.close)

    def close(self) -> None:
        """Stop every generation, wait for llama.cpp to let go of them, then shut its server down."""
        if self._closing.is_set():
            return
        self._closing.set()
        deadline = time.monotonic() + CLOSE_WAIT_S
        for thread in list(self._running):
            thread.join(max(0.0, deadline - time.monotonic()))
        if any(t.is_alive() for t in self._running):
            log.warning("the language model did not stop within %.0f s", CLOSE_WAIT_S)
            return  # destroying the server under a running request would crash; the process ends anyway
        self.server = None
        shutil.rmtree(self._slot_files, ignore_errors=True)

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self._url + path, json.dumps(body).encode(), {
            "Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"})
        with self._http.open(request, timeout=60) as response:
            return json.loads(response.read())

    def prime_slots(self, messages: list[dict]) -> int:
        """Put ``messages`` (the system prompt every conversation starts with) into every slot: evaluated
        once, then copied slot to slot. Returns the number of slots primed.

        A conversation that starts in a cold slot evaluates the whole system prompt before its first
        token: with four people arriving at once, three did, and their first replies took 6.9-7.7 s
        instead of 1.6-3.6 s (`avatar bench --sessions 1,4`, 2-core AMD EPYC, 2026-12-02). Evaluating it
        in every slot would cost the start-up one evaluation per slot (a 742-token prompt with a small
        knowledge folder: 10 s each on that machine); a copy takes milliseconds."""
        held = []
        try:
            for i in range(len(self._slots)):
                held.append(self._slots.acquire(f"warm-up-{i}"))
            self._prime([slot for slot, _ in held], messages)
        finally:
            for slot, _ in held:
                self._slots.release(slot)
            for i in range(len(self._slots)):
                self._slots.forget(f"warm-up-{i}")
        return len(self._slots)

    def reprime_free_slots(self, messages: list[dict]) -> int:
        """``prime_slots`` again after the system prompt changed (a knowledge folder standing in it was
        edited), in the slots free now; returns how many. A busy slot's conversation evaluates the new
        prompt at its next turn, and nobody waiting for a slot is kept waiting: with a waiter, nothing
        is primed. Blocking (seconds: a whole system prompt is evaluated once): run it off the event loop."""
        taken = self._slots.take_free()
        if not taken:
            return 0
        try:
            return len(taken) if self._prime(taken, messages) else 0
        finally:
            for slot in taken:
                self._slots.release(slot)

    def _prime(self, slots: list[int], messages: list[dict]) -> bool:
        """Evaluate ``messages`` in the first of ``slots`` and copy its cache into the others (all held by
        the caller); False when the backend is closing."""
        me = threading.current_thread()
        self._running.add(me)  # close() waits for it
        try:
            if not self._evaluate(slots[0], messages, "the system prompt"):
                return False
            self._copy_slot(slots[0], slots[1:])
            return True
        finally:
            self._running.discard(me)

    def _evaluate(self, slot: int, messages: list[dict], what: str) -> bool:
        """Evaluate ``messages`` into ``slot``'s cache (held by the caller; one token is written and
        dropped); False when the backend is closing."""
        if self._closing.is_set():
            return False
        errors = []

        def on_chunk(chunk: dict) -> bool:  # True: llama.cpp stops
            if "error" in chunk:
                errors.append(chunk["error"])
            return self._closing.is_set()

        self.server.handle_chat_completions(
            {"messages": plain_messages(messages), "stream": True, "max_tokens": 1, "temperature": 0.0,
             "id_slot": slot, "cache_prompt": True}, on_chunk)
        if errors:
            raise StageError(f"the LLM could not evaluate {what}: {errors[0]}")
        return not self._closing.is_set()

    def prefill(self, messages: list[dict], conversation: str) -> bool:
        """Evaluate the start of ``conversation``'s next prompt (the user still speaking: their words so
        far) into its slot, so that the turn evaluates only what differs. Only while this engine is idle
        (``SlotTable.try_acquire``): it never delays a reply. True when it ran. Blocking."""
        slot = self._slots.try_acquire(conversation)
        if slot is None:
            return False
        me = threading.current_thread()
        self._running.add(me)
        try:
            return self._evaluate(slot, messages, "the words so far")
        finally:
            self._slots.release(slot)
            self._running.discard(me)

    def _copy_slot(self, source: int, targets: list[int]) -> None:
        """The KV cache of slot ``source`` into each of ``targets`` (all held by the caller)."""
        name = f"prime-{secrets.token_hex(4)}.bin"
        try:
            self._post(f"/slots/{source}?action=save", {"filename": name})
            for slot in targets:
                self._post(f"/slots/{slot}?action=restore", {"filename": name})
        except (OSError, ValueError) as exc:
            raise StageError(f"the LLM could not copy the system prompt between slots: {exc}") from None
        finally:
            (Path(self._slot_files) / name).unlink(missing_ok=True)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` with special tokens parsed (as a chat template's text is)."""
        # Tokenising reads only the vocabulary: it runs on the server's HTTP thread, never waits for a slot
        # (3 ms for a sentence through localhost).
        body = json.dumps({"content": text, "add_special": False, "parse_special": True}).encode()
        request = urllib.request.Request(self._tokenize_url, body, {
            "Content-Type": "application/json", "Authorization": f"Bearer {self._api_key}"})
        try:
            with self._http.open(request, timeout=10) as response:
                return list(json.loads(response.read())["tokens"])
        except (OSError, ValueError, KeyError) as exc:
            raise StageError(f"the LLM could not count tokens: {exc}") from None

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def forget(self, conversation: str) -> None:
        self._slots.forget(conversation)
        self.last_timings.pop(conversation, None)

    def stream_chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        cancel: threading.Event | None = None,
        conversation: str | None = None,
        hold: Callable[[], bool] | None = None,
    ) -> Iterator[str]:
        """``hold`` (see avatar.conversation.pacing): asked before each token; while it says True the reply pauses, its
        slot kept. It goes on as a continuation of the same assistant message: the slot's cache covers
        all of it, so going on evaluates one token."""
        if self._closing.is_set():
            raise StageError("the language model is shutting down")
        acquired = self._slots.acquire(conversation, cancel)
        if acquired is None:
            return
        slot, waited = acquired
        if waited > 0.5:
            log.info("conversation %s waited %.1f s for an LLM slot", (conversation or "-")[:8], waited)
        items: queue.Queue = queue.Queue()
        stop = threading.Event()  # the reader is gone: stop generating at the next token

        def stopped() -> bool:
            return stop.is_set() or self._closing.is_set() or (cancel is not None and cancel.is_set())

        def generate() -> None:
            written, left = "", max_tokens
            try:
                while left > 0:
                    paused = finished = False

                    def on_chunk(chunk: dict) -> bool:  # True: llama.cpp stops this request
                        nonlocal written, left, paused, finished
                        items.put(chunk)
                        for choice in chunk.get("choices") or ():
                            piece = (choice.get("delta") or {}).get("content")
                            if piece:
                                written += piece
                                left -= 1
                            finished = finished or choice.get("finish_reason") is not None
                        if stopped():
                            return True
                        paused = hold is not None and not finished and hold()
                        return paused

                    prompt = messages + [{"role": "assistant", "content": written}] if written else messages
                    self.server.handle_chat_completions(
                        {"messages": plain_messages(prompt), "stream": True, "max_tokens": left,
                         "temperature": temperature, "id_slot": slot, "cache_prompt": True}, on_chunk)
                    if not paused or finished:
                        return
                    while hold() and not stopped():
                        time.sleep(HOLD_POLL_S)
                    if stopped():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the reader
                items.put(exc)
            finally:
                self._slots.release(slot)  # only once llama.cpp let go of the slot
                self._running.discard(threading.current_thread())
                items.put(_END)

        producer = threading.Thread(target=generate, name=f"llm-slot{slot}", daemon=True)
        self._running.add(producer)
        producer.start()
        try:
            while True:
                try:
                    item = items.get(timeout=0.05)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        return  # still evaluating the prompt: llama.cpp stops at its first token
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise StageError(f"the LLM could not answer: {item}") from None
                if "error" in item:
                    error = item["error"]
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise StageError(f"the LLM could not answer: {message}")
                if "timings" in item:
                    self._remember(conversation, item["timings"])
                if cancel is not None and cancel.is_set():
                    return
                for choice in item.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield piece
        finally:
            stop.set()

    def _remember(self, conversation: str | None, timings: dict) -> None:
        self.last_timings[conversation] = timings
        log.debug("conversation %s: %s prompt tokens evaluated in %.0f ms (%s from the cache), %s generated",
                  (conversation or "-")[:8], timings.get("prompt_n"), timings.get("prompt_ms", 0.0),
                  timings.get("cache_n"), timings.get("predicted_n"))
        while len(self.last_timings) > 4 * len(self._slots):  # conversations that never said goodbye
            self.last_timings.pop(next(iter(self.last_timings)))
