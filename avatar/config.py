"""Configuration: one TOML file, every key optional. ``avatar serve --config FILE``.

Sections mirror the pipeline: [server], [persona], [vad], [asr], [llm], [tts], [video], [memory], [knowledge],
[limits].
Unknown keys are an error (a typo should not silently fall back to a default).
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from avatar.errors import ConfigError
from avatar.vad.base import EndpointerConfig


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
    voice: str = "joe-medium"
    face: str = "astronaut"


@dataclass
class ASRConfig:
    backend: str = "faster-whisper"
    model: str = "tiny.en"  # "tiny.en" | "base" (multilingual) | a CTranslate2 model directory
    device: str = "cpu"  # "cpu" | "cuda" | "auto"
    compute_type: str = "int8"  # "int8" on CPU, "float16" on CUDA
    beam_size: int = 1
    # How often to re-transcribe the utterance while the user speaks. Whisper encodes a 30 s window per
    # call whatever the length, so each partial costs as much as the final one; spaced out, they rarely
    # still run when speech ends and the final transcription (on the critical path) starts.
    partial_interval_ms: int = 1500
    cpu_threads: int = 2


@dataclass
class LLMConfig:
    backend: str = "xllamacpp"  # "xllamacpp" | "transformers" | "openai" ("llama-cpp": old name of xllamacpp)
    # "auto" (a tier chosen from the machine, see avatar.tiers) | "qwen2.5-0.5b" | "qwen2.5-1.5b" |
    # "smollm2-135m" | a GGUF / HF directory / remote name
    model: str = "auto"
    url: str = ""  # OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1
    api_key: str = ""
    device: str = "cpu"  # "cpu" | "cuda" | "auto" (xllamacpp needs its CUDA wheel for "cuda")
    gpu_layers: int = 999  # xllamacpp on a GPU: layers offloaded (999: all)
    # Generation threads. One: while the LLM writes the rest of a reply, TTS speaks the first clause and
    # the face renders; on 2 cores a second LLM thread slows them more than it speeds the LLM.
    n_threads: int = 1
    n_threads_batch: int = 2  # prompt evaluation, when nothing else is running
    context_tokens: int = 4096  # per conversation
    # xllamacpp: conversations that generate at once, each with its own prompt cache; more sessions queue.
    slots: int = 4
    max_tokens: int = 160
    temperature: float = 0.6


@dataclass
class TTSConfig:
    backend: str = "piper"
    voice: str = ""  # "" means the persona's voice; else a preset name or a .onnx path
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
    chunk_chars: int = 500  # documents are cut into passages of about this many characters
    poll_s: float = 2.0  # how often the folder is checked for new, changed and deleted files (0: never)
    # Replace reply clauses whose numbers, prices, times or names the retrieved passages do not support.
    check: bool = True
    phone: str = ""  # offered when the answer is unknown; "" = the first phone number found in the documents


@dataclass
class LimitsConfig:
    max_message_bytes: int = 256 * 1024
    max_text_chars: int = 2000
    audio_rate_slack: float = 1.5  # audio may arrive this much faster than real time
    turns_per_minute: int = 30
    max_sessions: int = 32
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


@dataclass
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    persona: PersonaConfig = field(default_factory=PersonaConfig)
    vad: EndpointerConfig = field(default_factory=EndpointerConfig)
    asr: ASRConfig = field(default_factory=ASRConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    tts: TTSConfig = field(default_factory=TTSConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    knowledge: KnowledgeConfig = field(default_factory=KnowledgeConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    @property
    def data_path(self) -> Path:
        return Path(self.server.data_dir) if self.server.data_dir else default_data_dir()

    @property
    def system_prompt(self) -> str:
        return self.persona.system_prompt.replace("{name}", self.persona.name)


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
    return _fill(Config, data, "")
