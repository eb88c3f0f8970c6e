#!/usr/bin/env python
"""Word error of the ASR on speech in public-place noise, with and without DeepFilterNet3 noise suppression.

Speech: espeak-ng says kiosk-like questions (16 kHz). Noise, made here so the run needs no download:
- babble: four other espeak-ng voices talking over each other (a crowd in a shop or a lobby);
- street: brown and pink noise with slow swells (traffic passing) and a low engine hum.
Each sentence is mixed with each noise at each SNR, transcribed by the project's ASR (asr.model, default
faster-whisper tiny.en), once as is and once through avatar.media.denoise (what ``audio.denoise =
"deepfilter"`` does in a session). WER = word edits / reference words, over all sentences.

    PYTHONPATH=. python scripts/denoise_wer.py                # English, tiny.en, SNR 0/5/10 dB
    PYTHONPATH=. python scripts/denoise_wer.py --language zh --asr-model base --snr 5 10
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SENTENCES = {
    "en": ["Where can I find the toilets please", "What time does the museum close today",
           "How do I get to the train station from here", "Do you have this jacket in a larger size",
           "Can you tell me where the exhibition about dinosaurs is", "Is there a pharmacy near this hotel",
           "I would like to check in to my room", "How much does a ticket for children cost"],
    "zh": ["请问洗手间在哪里", "博物馆今天几点关门", "从这里怎么去火车站", "这件外套有大一点的尺码吗",
           "附近有药店吗", "我想办理入住", "儿童票多少钱", "恐龙展览在哪里"],
}
VOICES = {"en": "en-us", "zh": "cmn"}
BABBLE = ["The weather has been lovely all week and we went to the beach twice",
          "My brother bought a new car last month but it is already broken",
          "Could you pass me the menu, I think I will have the soup",
          "The meeting was moved to Thursday because half the team is away"]
BABBLE_VOICES = ["en-gb", "en-us+f3", "en-gb-x-rp+m3", "en-us+f4"]


def babble(n: int, rng: np.random.Generator, workdir: Path) -> np.ndarray:
    from tests.speech import espeak_wav

    out = np.zeros(n, np.float32)
    for i, (text, voice) in enumerate(zip(BABBLE, BABBLE_VOICES)):
        talk = espeak_wav(text, workdir / f"babble{i}.wav", 16000, voice=voice, wpm=150 + 15 * i)
        talk = np.tile(talk, n // len(talk) + 2)
        start = int(rng.integers(0, len(talk) - n))
        out += talk[start:start + n] / np.sqrt(np.mean(talk ** 2) + 1e-9)
    return out


def street(n: int, rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import lfilter

    white = rng.normal(0, 1, n)
    brown = lfilter([1.0], [1.0, -0.995], white)
    pink = lfilter([0.049922035, -0.095993537, 0.050612699, -0.004408786], [1, -2.494956002, 2.017265875,
                                                                            -0.522189400], rng.normal(0, 1, n))
    t = np.arange(n) / 16000
    swell = 0.6 + 0.4 * np.sin(2 * np.pi * t / 3.7 + rng.uniform(0, 6)) ** 2  # cars passing
    hum = 0.3 * np.sin(2 * np.pi * 95 * t) + 0.15 * np.sin(2 * np.pi * 190 * t)
    noise = (brown / np.std(brown) + pink / np.std(pink)) * swell + hum
    return noise.astype(np.float32)


def mix(speech: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    gain = np.sqrt(np.mean(speech ** 2) / (np.mean(noise ** 2) + 1e-12) / 10 ** (snr_db / 10))
    mixed = speech + gain * noise[:len(speech)]
    return (mixed / max(1.0, np.abs(mixed).max() / 0.99)).astype(np.float32)


def words(text: str, language: str) -> list[str]:
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return [c for c in text if not c.isspace()] if language == "zh" else text.split()  # zh: characters


def edits(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--language", choices=sorted(SENTENCES), default="en")
    parser.add_argument("--asr-model", default="tiny.en", help="asr.model (zh needs a multilingual one: base)")
    parser.add_argument("--snr", type=float, nargs="+", default=[0.0, 5.0, 10.0], help="SNRs in dB")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-db", type=float, nargs="+", default=[100.0, 12.0],
                        help="audio.denoise_limit_db values to compare: at most this much noise is removed "
                        "(100: no limit)")
    parser.add_argument("--noise", choices=["babble", "street"], nargs="+", default=["babble", "street"])
    args = parser.parse_args(argv)

    from avatar.media.denoise import denoise_file
    from avatar.config import ASRConfig
    from avatar.models.loading import load_asr
    from tests.speech import espeak_wav

    asr = load_asr(ASRConfig(model=args.asr_model))
    rng = np.random.default_rng(args.seed)  # the noises themselves
    workdir = Path(tempfile.mkdtemp(prefix="denoise_wer_"))
    lang = args.language
    speech = [espeak_wav(s, workdir / f"s{i}.wav", 16000, voice=VOICES[lang]) for i, s in enumerate(SENTENCES[lang])]
    total = max(len(s) for s in speech) + 16000
    noises = {"babble": babble(total, rng, workdir), "street": street(total, rng)}
    language = None if lang == "en" else lang
    results: dict[tuple[str, float, str], list[int]] = {}
    t0 = time.monotonic()
    cases = [(name, snr) for name in args.noise for snr in args.snr]
    for k, (name, snr) in enumerate(cases, 1):
        for i, (text, clean) in enumerate(zip(SENTENCES[lang], speech)):
            # The same noise excerpt for a sentence whatever else runs: tables of different runs compare.
            pick = np.random.default_rng([args.seed, list(noises).index(name), int(snr * 10) + 1000, i])
            start = int(pick.integers(0, total - len(clean)))
            noisy = mix(clean, noises[name][start:], snr)
            variants = [("raw", noisy)] + [(limit, denoise_file(noisy, attenuation_limit_db=limit))
                                           for limit in args.limit_db]
            for variant, audio in variants:
                hyp = asr.transcribe(audio, language=language).text
                ref_words = words(text, lang)
                counts = results.setdefault((name, snr, variant), [0, 0])
                counts[0] += edits(ref_words, words(hyp, lang))
                counts[1] += len(ref_words)
        print(f"[{k}/{len(cases)}] {name} {snr:g} dB done ({time.monotonic() - t0:.0f} s)", file=sys.stderr)
    clean_counts = [0, 0]
    for text, clean in zip(SENTENCES[lang], speech):
        ref_words = words(text, lang)
        clean_counts[0] += edits(ref_words, words(asr.transcribe(clean, language=language).text, lang))
        clean_counts[1] += len(ref_words)
    unit = "CER" if lang == "zh" else "WER"
    print(f"\n{unit}, {len(speech)} espeak-ng sentences ({lang}), ASR {args.asr_model}; clean speech: "
          f"{100 * clean_counts[0] / clean_counts[1]:.1f} %")
    limits = " | ".join(f"{unit} with DeepFilterNet3, limit {limit:g} dB" for limit in args.limit_db)
    print(f"| noise | SNR | {unit} without | {limits} |")
    print("|---|---|---|" + "---|" * len(args.limit_db))
    for name, snr in cases:
        cells = [results[(name, snr, v)] for v in ["raw", *args.limit_db]]
        print(f"| {name} | {snr:g} dB | " + " | ".join(f"{100 * e / n:.1f} %" for e, n in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
