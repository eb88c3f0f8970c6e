"""The talking head: portrait preparation, animation controls, rendering and offline video.

Public API::

    FaceLibrary(dirs, size=512, progress=print)  .names, .get(name) -> PreparedFace
    prepare_face(photo_path, name=None, out_dir=None, *, size=512) -> PreparedFace
    FaceAnimator(face, *, fps=25, sample_rate=22050, seed=0, quality=80)
        .add_speech(position, chunk_audio, phonemes)  .clear_speech(from_position)
        .controls_at(position) -> dict  .frame_at(position) -> BGR array  .jpeg_at(position) -> bytes
        .is_speaking(position) -> bool
    create_renderer(face, backend="warp") -> Renderer (.render(controls), .render_batch(list))
    avatar.face.offline: render_mp4, render_main, face_add_main
    avatar.face.lipsync: lipsync_check

MediaPipe is imported only when a portrait has to be prepared (or by the lip-sync check).
"""

from avatar.face.animator import FaceAnimator
from avatar.face.controls import CONTROL_NAMES, CONTROLS, IdleMotion, control_stream
from avatar.face.library import FaceLibrary, default_faces_dir
from avatar.face.prepare import PreparedFace, prepare_face
from avatar.face.renderer import Renderer, WarpRenderer, create_renderer

__all__ = [
    "CONTROLS", "CONTROL_NAMES", "FaceAnimator", "FaceLibrary", "IdleMotion", "PreparedFace", "Renderer",
    "WarpRenderer", "control_stream", "create_renderer", "default_faces_dir", "prepare_face",
]
