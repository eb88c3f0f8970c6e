"""Indices into MediaPipe's 478-point face mesh (468 mesh points + 10 iris points with refine_landmarks).

Kept here as constants so that rendering never imports MediaPipe. "Left"/"right" follow MediaPipe and
anatomy: the subject's left eye is on the image's right.
"""

from __future__ import annotations

N_LANDMARKS = 478

# Lips, each polyline ordered from the image-left mouth corner to the image-right one.
LIPS_OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
LIPS_OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
LIPS_INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
LIPS_INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]
MOUTH_CORNERS = (61, 291)  # outer corners
INNER_CORNERS = (78, 308)

# Eyelids, each ordered from the image-left eye corner to the image-right one.
RIGHT_EYE_UPPER = [33, 246, 161, 160, 159, 158, 157, 173, 133]  # subject's right = image left
RIGHT_EYE_LOWER = [33, 7, 163, 144, 145, 153, 154, 155, 133]
LEFT_EYE_UPPER = [362, 398, 384, 385, 386, 387, 388, 466, 263]  # subject's left = image right
LEFT_EYE_LOWER = [362, 382, 381, 380, 374, 373, 390, 249, 263]
RIGHT_IRIS_CENTER = 468
LEFT_IRIS_CENTER = 473

RIGHT_BROW = [70, 63, 105, 66, 107, 46, 53, 52, 65, 55]
LEFT_BROW = [336, 296, 334, 293, 300, 285, 295, 282, 283, 276]

FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
FOREHEAD_TOP = 10
CHIN = 152
NOSE_TIP = 1
CHEEK_SILHOUETTE = (234, 454)  # widest face points, about at ear level (jaw pivot depth)
JAW_LINE_ENDS = (132, 361)  # face outline near the ear lobes: where the mandible meets the cheek
