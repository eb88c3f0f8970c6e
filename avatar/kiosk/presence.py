"""Is someone standing in front of the kiosk? Face detection on low-rate camera frames.

The kiosk page sends a small JPEG from its camera about twice a second (``camera_frame``, see
docs/protocol.md). Each one is decoded and run through MediaPipe's short-range face detector (BlazeFace,
``face_detection_short_range.tflite``, shipped inside mediapipe==0.10.21: a face within about two metres,
which is where a kiosk's visitor stands). Frames are decoded in memory, looked at once and dropped: they
are never written anywhere and never leave the machine.

One detector for the whole server, loaded at first use; MediaPipe graphs are not thread-safe, so every
call goes through one worker thread (a 320x240 frame takes a few milliseconds).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from avatar.errors import ProtocolError

log = logging.getLogger(__name__)

MAX_FRAME_PIXELS = 1280 * 960  # a presence check needs no more; larger frames are refused


@dataclass(frozen=True)
class Sighting:
    faces: int
    largest: float  # the largest face's width as a share of the frame's width (0 without a face)


class FaceDetector:
    """MediaPipe face detection; ``detect(jpeg)`` -> Sighting. Use ``FaceDetector.shared()``."""

    _shared: "FaceDetector | None" = None
    _shared_lock = threading.Lock()

    def __init__(self, min_confidence: float = 0.5, min_face_width: float = 0.08):
        import mediapipe as mp

        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=0,
                                                                   min_detection_confidence=min_confidence)
        # A face narrower than this share of the frame is someone passing far away, not a visitor.
        self.min_face_width = min_face_width
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="presence")

    @classmethod
    def shared(cls) -> "FaceDetector":
        with cls._shared_lock:
            if cls._shared is None:
                cls._shared = cls()
                log.info("presence: MediaPipe short-range face detector loaded")
            return cls._shared

    def detect_rgb(self, rgb: np.ndarray) -> Sighting:
        result = self._detector.process(np.ascontiguousarray(rgb))
        widths = [d.location_data.relative_bounding_box.width for d in (result.detections or [])]
        widths = [w for w in widths if w >= self.min_face_width]
        return Sighting(len(widths), max(widths, default=0.0))

    def detect(self, jpeg: bytes) -> Sighting:
        return self.detect_rgb(decode_jpeg(jpeg))

    async def detect_async(self, jpeg: bytes) -> Sighting:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self.detect, jpeg)


NOT_JPEG = ("'camera_frame.jpeg' is not a JPEG image; send a base64-encoded JPEG of the camera "
            "(e.g. canvas.toDataURL('image/jpeg') without its 'data:' prefix)")


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, read before decoding: a few bytes can declare an image
    of gigabytes, which must be refused before the decoder allocates it. None if it is no JPEG."""
    if not data.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
        i += 2 + length
    return None


def decode_jpeg(jpeg: bytes) -> np.ndarray:
    """JPEG bytes -> RGB array; ``ProtocolError`` for anything else or for a frame over MAX_FRAME_PIXELS."""
    import cv2

    size = jpeg_size(jpeg)
    if size is None:
        raise ProtocolError(NOT_JPEG)
    if size[0] * size[1] > MAX_FRAME_PIXELS:
        raise ProtocolError(f"a camera frame of {size[0]}x{size[1]} is too large for a presence check; send "
                            "320x240 (at most 1280x960)")
    try:
        image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ProtocolError(NOT_JPEG)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
