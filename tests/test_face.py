"""The talking head: preparation, controls, renderer, animator, offline MP4 and the lip-sync gate."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from avatar.errors import FaceError  # noqa: E402
from avatar.face import FaceAnimator, FaceLibrary, create_renderer, prepare_face  # noqa: E402
from avatar.face import landmarks as lm  # noqa: E402
from avatar.face.controls import CONTROL_NAMES, IdleMotion, audio_track, control_stream, phoneme_track  # noqa: E402
from avatar.models.tts.base import Phoneme  # noqa: E402
from tests.face_helpers import FACES, REPO, SENTENCES, dark_pixels, espeak_speech, heldout_portrait, piper_speech  # noqa: E402

SR = 22050


@pytest.fixture(scope="module")
def face():
    lib = FaceLibrary([FACES], size=512, progress=None)
    return lib.get("astronaut")


@pytest.fixture(scope="module")
def renderer(face):
    return create_renderer(face)


def mouth_box(face, pad: int = 12) -> tuple[int, int, int, int]:
    pts = face.landmarks[lm.LIPS_OUTER_UPPER + lm.LIPS_OUTER_LOWER, :2]
    x0, y0 = pts.min(0).astype(int) - pad
    x1, y1 = pts.max(0).astype(int) + pad
    return int(x0), int(y0), int(x1), int(y1 + 2 * pad)


# -- preparation ------------------------------------------------------------------------------------
def test_unreadable_image(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a picture")
    with pytest.raises(FaceError, match="cannot read image"):
        prepare_face(bad)
    with pytest.raises(FaceError, match="no such file"):
        prepare_face(tmp_path / "missing.png")


def test_no_face(tmp_path):
    import skimage.data

    cat = tmp_path / "cat.png"
    cv2.imwrite(str(cat), skimage.data.chelsea()[:, :, ::-1])
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((300, 300, 3), 128, np.uint8))
    for photo in (cat, gray):
        with pytest.raises(FaceError, match="no face found") as err:
            prepare_face(photo)
        assert "front-facing portrait" in err.value.message


def test_face_too_small(tmp_path):
    import skimage.data

    small = tmp_path / "small.png"  # the original NASA portrait: the face is ~92 px wide
    cv2.imwrite(str(small), skimage.data.astronaut()[:, :, ::-1])
    with pytest.raises(FaceError, match=r"only \d+ px wide; it needs at least 120 px"):
        prepare_face(small)


def test_several_faces(tmp_path):
    img = cv2.imread(str(FACES / "astronaut.png"))
    two = tmp_path / "two.png"
    cv2.imwrite(str(two), np.hstack([img, img]))
    with pytest.raises(FaceError, match="found 2 faces") as err:
        prepare_face(two)
    assert "one person" in err.value.message


def test_prepare_caches_and_invalidates(tmp_path, monkeypatch):
    import avatar.face.prepare as prep

    photo = tmp_path / "me.png"
    shutil.copy(FACES / "astronaut.png", photo)
    face = prepare_face(photo)
    cache = tmp_path / "me.face.npz"
    assert cache.is_file() and face.cache_path == cache
    assert face.image.shape == (512, 512, 3) and face.landmarks.shape == (478, 3)
    # a valid cache loads without MediaPipe
    monkeypatch.setattr(prep, "detect_landmarks", lambda *a, **k: pytest.fail("cache not used"))
    again = prepare_face(photo)
    assert np.allclose(again.landmarks, face.landmarks)
    # a changed photo is prepared again
    img = cv2.imread(str(photo))
    img[0, 0] = 255 - img[0, 0]
    cv2.imwrite(str(photo), img)
    with pytest.raises(pytest.fail.Exception, match="cache not used"):
        prepare_face(photo)


def test_library_names_get_and_progress(tmp_path):
    user = tmp_path / "faces"
    user.mkdir()
    shutil.copy(FACES / "astronaut.png", user / "anna.png")
    (user / "broken.jpg").write_bytes(b"nope")
    lines: list[str] = []
    lib = FaceLibrary([FACES, user], size=512, progress=lines.append)
    assert lib.names == ["anna", "astronaut"]
    assert any("anna" in line and "preparing" in line for line in lines)
    assert "broken" in lib.errors and any("broken" in line and "skipped" in line for line in lines)
    assert (user / "anna.face.npz").is_file()
    with pytest.raises(FaceError, match="unknown face 'nobody'; known faces: anna, astronaut"):
        lib.get("nobody")


def test_cached_face_renders_without_mediapipe():
    code = textwrap.dedent(f"""
        import sys
        from avatar.face import FaceLibrary, FaceAnimator
        lib = FaceLibrary([{str(FACES)!r}], progress=None)
        animator = FaceAnimator(lib.get("astronaut"), fps=25, sample_rate=22050)
        assert animator.jpeg_at(0)[:2] == b"\\xff\\xd8"
        assert "mediapipe" not in sys.modules, "mediapipe was imported"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


def test_face_add_main(tmp_path, capsys):
    from avatar.face.offline import face_add_main

    faces_dir = tmp_path / "faces"
    assert face_add_main(FACES / "astronaut.png", "eileen", faces_dir=faces_dir) == 0
    assert (faces_dir / "eileen.png").is_file() and (faces_dir / "eileen.face.npz").is_file()
    assert "added face 'eileen'" in capsys.readouterr().out
    gray = tmp_path / "gray.png"
    cv2.imwrite(str(gray), np.full((200, 200, 3), 90, np.uint8))
    with pytest.raises(FaceError, match="no face found"):
        face_add_main(gray, "gray", faces_dir=faces_dir)
    assert not (faces_dir / "gray.png").exists()
    assert FaceLibrary([faces_dir], progress=None).names == ["eileen"]


# -- controls ---------------------------------------------------------------------------------------
def phonemes(spec: str, step: float = 0.1) -> list[Phoneme]:
    return [Phoneme(sym, 0.1 + i * step, step) for i, sym in enumerate(spec.split())]


def test_vowel_opens_and_bilabial_closes():
    ph = phonemes("m a m a p i b u")  # each 100 ms from t=0.1
    times = np.array([0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85])  # centre of each phoneme
    track = phoneme_track(ph, times, lead=0.0)
    jaw, low = track["jaw_open"], track["lower_lip"]
    assert jaw[1] > 0.4 and jaw[3] > 0.4  # /a/ (between two /m/)
    for i in (0, 2, 4, 6):  # m m p b
        assert jaw[i] < 0.08 and low[i] > 0.9, (i, jaw[i], low[i])
    assert track["lip_spread"][5] > 0.3  # /i/ spreads
    assert track["lip_round"][7] > 0.5  # /u/ rounds
    # coarticulation: no steps, the jaw moves through intermediate values between /m/ and /a/
    fine = phoneme_track(ph, np.arange(0.1, 0.35, 0.01), lead=0.0)["jaw_open"]
    assert np.abs(np.diff(fine)).max() < 0.25
    assert ((fine > 0.1) & (fine < 0.5)).sum() >= 2
    # before and after the speech the mouth is at rest
    rest = phoneme_track(ph, np.array([-0.5, 2.0]))
    assert all(abs(v).max() < 0.05 for v in rest.values())


def test_audio_drives_mouth():
    t = np.arange(int(2.0 * SR)) / SR
    tone = np.sin(2 * np.pi * 180 * t) + 0.4 * np.sin(2 * np.pi * 540 * t)
    env = (((t > 0.3) & (t < 0.8)) | ((t > 1.2) & (t < 1.6))).astype(float)
    audio = (tone * env * 9000).astype(np.int16)
    times = np.array([0.1, 0.55, 1.0, 1.4, 1.9])
    jaw = audio_track(audio, SR, times)["jaw_open"]
    assert jaw[1] > 0.4 and jaw[3] > 0.4
    assert jaw[0] < 0.05 and jaw[2] < 0.1 and jaw[4] < 0.05
    # a quiet vowel opens less than a loud one
    audio2 = audio.copy()
    audio2[: int(1.0 * SR)] //= 8
    jaw2 = audio_track(audio2, SR, times)["jaw_open"]
    assert jaw2[1] < jaw2[3] - 0.2


def test_idle_motion_is_natural_and_deterministic():
    a, b, c = IdleMotion(seed=3), IdleMotion(seed=3), IdleMotion(seed=4)
    times = np.arange(0, 60, 0.02)
    blinks = np.array([a.at(t)["blink_left"] for t in times])
    assert [b.at(t)["blink_left"] for t in times] == list(blinks)
    assert [c.at(t)["head_yaw"] for t in times[:50]] != [a.at(t)["head_yaw"] for t in times[:50]]
    starts = times[1:][(blinks[1:] > 0.5) & (blinks[:-1] <= 0.5)]
    gaps = np.diff(starts)
    assert 8 <= len(starts) <= 35
    assert gaps.min() > 0.25 and np.median(gaps) > 1.5
    closed = (blinks > 0.5).sum() * 0.02 / len(starts)
    assert 0.04 < closed < 0.2  # ~100 ms above half closed per blink
    yaw = np.array([a.at(t)["head_yaw"] for t in times])
    assert 0.3 < np.abs(yaw).max() < 5 and np.abs(np.diff(yaw)).max() < 0.1  # slow and smooth


def test_control_stream_is_a_dict_per_frame():
    ph = phonemes("h ə l o ʊ")
    frames = control_stream(np.zeros(int(0.8 * SR), np.int16), SR, ph, fps=25)
    assert len(frames) == 20
    assert all(set(f) == set(CONTROL_NAMES) for f in frames)
    assert max(f["jaw_open"] for f in frames) > 0.3


# -- renderer ---------------------------------------------------------------------------------------
def test_renderer_neutral_is_the_portrait(face, renderer):
    assert np.array_equal(renderer.render({}), face.image)
    frame = renderer.render({"jaw_open": 0.0, "blink_left": 0.0})
    assert np.array_equal(frame, face.image)


def test_renderer_moves_only_the_face(face, renderer):
    x0, y0, x1, y1 = face.roi
    outside = np.ones((512, 512), bool)
    outside[y0:y1, x0:x1] = False
    for controls in ({"jaw_open": 0.8}, {"jaw_open": 0.5, "head_yaw": 4, "head_pitch": -3, "head_roll": 2,
                                         "brow": 1, "blink_left": 1, "lip_spread": 0.5, "breath": 1}):
        frame = renderer.render(controls)
        assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
        assert np.array_equal(frame[outside], face.image[outside])
        # background corners far from the head are untouched even inside the region box
        for (cx, cy) in ((5, 5), (506, 5)):
            assert np.array_equal(frame[cy, cx], face.image[cy, cx])
    frame = renderer.render({"jaw_open": 0.8})
    bx0, by0, bx1, by1 = mouth_box(face)
    diff = np.abs(frame.astype(int) - face.image.astype(int)).max(axis=2)
    assert (diff[by0:by1, bx0:bx1] > 40).sum() > 300  # the mouth changed
    eyes = face.landmarks[lm.RIGHT_EYE_UPPER + lm.LEFT_EYE_UPPER + lm.RIGHT_BROW + lm.LEFT_BROW, :2]
    ex0, ey0 = eyes.min(0).astype(int) - 5
    ex1, ey1 = eyes.max(0).astype(int) + 5
    assert diff[ey0:ey1, ex0:ex1].max() <= 2  # the eyes did not (jaw only)


def test_mouth_open_on_vowel_closed_on_m(face, renderer):
    ph = phonemes("m a m", step=0.12)
    times = np.array([0.16, 0.28, 0.40])
    track = phoneme_track(ph, times, lead=0.0)
    frames = [renderer.render({k: float(v[i]) for k, v in track.items()}) for i in range(3)]
    box = mouth_box(face)
    dark = [dark_pixels(f, box) for f in frames]
    assert dark[1] > dark[0] + 150 and dark[1] > dark[2] + 150, dark
    # /m/ closes the lips: the photo's visible teeth (bright, between the inner lips) get covered
    inner = face.landmarks[lm.LIPS_INNER_UPPER + lm.LIPS_INNER_LOWER, :2]
    (ix0, iy0), (ix1, iy1) = inner.min(0).astype(int), inner.max(0).astype(int)

    def teeth(img):  # bright and unsaturated: teeth, not pink lips
        p = img[iy0:iy1 + 1, ix0:ix1 + 1].astype(int)
        return int(((p.min(axis=2) > 170) & (p.max(axis=2) - p.min(axis=2) < 40)).sum())

    rest = teeth(face.image)
    assert rest > 200  # this portrait smiles with its teeth
    assert teeth(frames[0]) < 0.2 * rest and teeth(frames[2]) < 0.2 * rest, ([teeth(f) for f in frames], rest)


def test_render_speed(face):
    import time

    r = create_renderer(face)
    idle = IdleMotion(0)
    controls = []
    for i in range(40):
        c = idle.at(i / 25)
        c.update(jaw_open=0.4 + 0.3 * np.sin(i / 3), lip_round=0.2, lower_lip=0.3)
        controls.append(c)
    r.render(controls[0])
    t = time.process_time()
    for c in controls:
        cv2.imencode(".jpg", r.render(c), [cv2.IMWRITE_JPEG_QUALITY, 80])
    per_frame = (time.process_time() - t) / len(controls)
    assert per_frame < 1 / 25, f"{per_frame * 1000:.1f} ms of CPU per frame"


# -- animator ---------------------------------------------------------------------------------------
def test_animator_places_speech_on_the_timeline(face):
    anim = FaceAnimator(face, fps=25, sample_rate=SR, seed=1)
    start = 2 * SR
    chunk = np.zeros(int(1.0 * SR), np.int16)
    anim.add_speech(start, chunk, phonemes("a a a a a a a a", step=0.1))
    assert anim.controls_at(start - SR // 2)["jaw_open"] < 0.02  # before: at rest
    assert anim.controls_at(start + int(0.5 * SR))["jaw_open"] > 0.4  # during the vowel
    assert anim.is_speaking(start + 100) and not anim.is_speaking(start - 100)
    jpeg = anim.jpeg_at(start + int(0.5 * SR))
    assert jpeg[:2] == b"\xff\xd8" and len(jpeg) > 5000
    assert anim.frame_at(start + int(0.5 * SR)).shape == (512, 512, 3)
    # barge-in: the mouth closes at once after the cut and the speech is over
    cut = start + int(0.5 * SR)
    anim.clear_speech(cut)
    assert not anim.is_speaking(cut + 10)
    assert anim.controls_at(cut + int(0.08 * SR))["jaw_open"] < 0.06
    assert anim.controls_at(cut + int(0.2 * SR))["jaw_open"] < 0.01


def test_animator_audio_only_and_determinism(face):
    t = np.arange(int(1.2 * SR)) / SR
    audio = (np.sin(2 * np.pi * 200 * t) * ((t > 0.2) & (t < 0.9)) * 10000).astype(np.int16)
    a = FaceAnimator(face, fps=25, sample_rate=SR, seed=7)
    b = FaceAnimator(face, fps=25, sample_rate=SR, seed=7)
    for anim in (a, b):
        anim.add_speech(1000, audio, [])
    positions = a.frame_positions(len(audio), start=1000)
    assert len(positions) == 30
    jaws = [a.controls_at(p)["jaw_open"] for p in positions]
    assert max(jaws[8:20]) > 0.4 and jaws[0] < 0.05 and jaws[-1] < 0.05
    assert [b.controls_at(p) for p in positions[:5]] == [a.controls_at(p) for p in positions[:5]]



def test_animator_skips_only_frames_that_look_the_same(face):
    """A resting face skips about half its frames; a skipped frame differs from the one on screen no more
    than consecutive frames do; blinks and speech are never skipped; a still face is refreshed every second."""
    live = FaceAnimator(face, fps=25, sample_rate=SR, seed=3)
    truth = FaceAnimator(face, fps=25, sample_rate=SR, seed=3)
    live.add_speech(4 * SR, np.full(SR, 8000, np.int16), phonemes("a m a m a m a m", step=0.12))
    step = SR // 25
    shown, shown_at, skipped, skip_diffs, consecutive, previous = None, 0, [], [], [], None
    for i in range(8 * 25):
        position = i * step
        frame = truth.frame_at(position).astype(np.float32)
        if previous is not None:
            consecutive.append(np.percentile(np.abs(frame - previous), 99.9))
        previous = frame
        if live.unchanged(position):
            skipped.append(position)
            skip_diffs.append(np.percentile(np.abs(frame - shown), 99.9))
            assert position - shown_at < SR  # refreshed at least once a second
        else:
            shown, shown_at = live.frame_at(position).astype(np.float32), position
    resting = [p for p in range(0, 8 * SR, step) if not 4 * SR - SR // 4 <= p < 5 * SR + SR // 2]
    assert 0.3 < sum(p in resting for p in skipped) / len(resting) < 0.8
    assert not any(live.is_speaking(p) or live.controls_at(p)["jaw_open"] > 0.02 for p in skipped)
    assert not any(live.controls_at(p)["blink_left"] > 0.05 for p in skipped)
    assert max(skip_diffs) <= max(consecutive)

# -- offline ----------------------------------------------------------------------------------------
def test_render_mp4_duration(face, tmp_path):
    av = pytest.importorskip("av")
    from avatar.face.offline import render_mp4

    speech = espeak_speech("Good morning.", tmp_path)
    if speech is None:
        pytest.skip("espeak-ng is not installed")
    audio, rate = speech
    out = tmp_path / "out.mp4"
    summary = render_mp4(face, audio, rate, None, out, fps=25)
    duration = len(audio) / rate
    with av.open(str(out)) as container:
        video = container.streams.video[0]
        audio_stream = container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio_stream.codec_context.name == "aac"
        assert abs(container.duration / 1e6 - duration) <= 1 / 25 + 1e-3
        frames = [f for f in container.decode(video=0)]
    assert len(frames) == summary["frames"] == int(np.ceil(duration * 25))
    assert frames[0].width == frames[0].height == 512
    assert [round(float(f.pts * f.time_base) * 25) for f in frames] == list(range(len(frames)))
    with av.open(str(out)) as container:
        samples = sum(f.samples for f in container.decode(audio=0))
    assert abs(samples - len(audio)) <= 1024


def test_render_main_from_audio(tmp_path, capsys):
    pytest.importorskip("av")
    from avatar.face.offline import render_main

    speech = espeak_speech("Yes.", tmp_path)
    if speech is None:
        pytest.skip("espeak-ng is not installed")
    assert render_main("astronaut", audio_path=str(tmp_path / "speech.wav"), out=tmp_path / "yes.mp4",
                       faces_dirs=[FACES]) == 0
    assert (tmp_path / "yes.mp4").stat().st_size > 1000
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(FaceError, match="unknown face 'nobody'"):
        render_main("nobody", audio_path=str(tmp_path / "speech.wav"), out=tmp_path / "x.mp4", faces_dirs=[FACES])


# -- lip-sync gate ------------------------------------------------------------------------------------
# Pearson r between the mouth opening that an independent MediaPipe pass measures on the rendered frames
# and the audio's RMS per frame, at the best lag within +-5 frames; the lag must be within 2 frames
# (80 ms, about where people start to notice audio-visual asynchrony). Natural speech itself reaches only
# about 0.3-0.6, because lips close on loud voiced /m/ and stay open on quiet consonants. We require
# r >= 0.6 everywhere except one case: phoneme-driven on the astronaut, whose photo smiles with open lips,
# so every m/b/p closure is a large drop in opening while a voiced /m/ stays loud, and she returns to that
# open smile in silence; there r >= 0.55 (measured 0.62-0.64 over repeated Piper runs, which vary a little
# from run to run; 0.73-0.75 on the held-out closed-mouth portrait).
R_MIN = 0.6
R_MIN_OPEN_SMILE_PHONEMES = 0.55
LAG_MAX = 2


@pytest.fixture(scope="module")
def meter():
    pytest.importorskip("mediapipe")
    from avatar.face.lipsync import MouthMeter

    m = MouthMeter()
    yield m
    m.close()


@pytest.fixture(scope="module")
def heldout_face(tmp_path_factory):
    src = heldout_portrait()
    if src is None:
        pytest.skip("matplotlib's grace_hopper.jpg sample is not installed")
    folder = tmp_path_factory.mktemp("heldout")
    photo = folder / "grace_hopper.jpg"
    shutil.copy(src, photo)
    return prepare_face(photo)


def _check(result, label, r_min=R_MIN):
    print(f"lip-sync {label}: {result.as_dict()}")
    assert result.detected >= 0.95 * result.frames, label
    assert result.r >= r_min and abs(result.lag) <= LAG_MAX, (label, result.as_dict())


@pytest.mark.parametrize("which", ["astronaut", "heldout"])
def test_lipsync_audio_driven(which, face, heldout_face, meter, tmp_path):
    from avatar.face.lipsync import lipsync_check

    speech = espeak_speech(SENTENCES[1], tmp_path)
    if speech is None:
        pytest.skip("espeak-ng is not installed")
    audio, rate = speech
    target = face if which == "astronaut" else heldout_face
    _check(lipsync_check(target, audio, rate, None, meter=meter), f"{which} audio-driven")


@pytest.mark.parametrize("which", ["astronaut", "heldout"])
def test_lipsync_phoneme_driven(which, face, heldout_face, meter):
    from avatar.face.lipsync import lipsync_check

    speech = piper_speech(" ".join(SENTENCES))
    if speech is None:
        pytest.skip("the Piper voice with phoneme timings is not installed")
    audio, rate, ph = speech
    target = face if which == "astronaut" else heldout_face
    r_min = R_MIN_OPEN_SMILE_PHONEMES if which == "astronaut" else R_MIN
    _check(lipsync_check(target, audio, rate, ph, meter=meter), f"{which} phoneme-driven", r_min)
