"""Resting faces: the idle motion loops, and its frames are rendered once per face for every session."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("cv2")

from avatar.face import FaceAnimator, FaceLibrary  # noqa: E402
from avatar.face.controls import IdleMotion  # noqa: E402
from avatar.models.tts.base import Phoneme  # noqa: E402
from tests.face_helpers import FACES  # noqa: E402

SR = 22050


@pytest.fixture(scope="module")
def face():
    return FaceLibrary([FACES], size=512, progress=None).get("astronaut")


def phonemes(spec: str, step: float = 0.1) -> list[Phoneme]:
    return [Phoneme(sym, 0.1 + i * step, step) for i, sym in enumerate(spec.split())]


def test_resting_frames_are_rendered_once_and_shared_by_sessions(face):
    """The idle motion loops, so a resting frame is rendered once per face and point of the loop; every other
    session (and the same session a loop later) gets the same JPEG without rendering. Speech is rendered."""
    idle = IdleMotion(seed=0)
    assert all(idle.at(t) == pytest.approx(idle.at(t + idle.period)) for t in np.arange(0.0, 30.0, 0.37))
    renders = []

    def counting(animator):
        real = animator.renderer.render
        animator.renderer.render = lambda controls: renders.append(1) or real(controls)
        return animator

    a = counting(FaceAnimator(face, fps=25, sample_rate=SR))
    b = counting(FaceAnimator(face, fps=25, sample_rate=SR))
    step = SR // 25
    first = [a.jpeg_at(i * step) for i in range(10)]
    rendered = len(renders)
    loop = round(idle.period * 25) * step
    assert [b.jpeg_at(loop + i * step) for i in range(10)] == first  # another session, a loop later
    assert len(renders) == rendered and b.unchanged(loop + 9 * step)  # nothing rendered; skipping still works
    b.add_speech(loop + 20 * step, np.full(SR // 2, 8000, np.int16), phonemes("a m a m", step=0.1))
    speaking = b.jpeg_at(loop + 25 * step)
    assert len(renders) == rendered + 1 and speaking != a.jpeg_at(25 * step)
