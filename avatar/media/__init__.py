"""Audio helpers, noise suppression, the face as a video source, and the timeline contract that every output
(a browser socket, an RTMP stream) implements."""
