"""Decoding raw photos for detection: any file in, RGB uint8 or a reason out, never an exception.

Photos collected for face datasets come in every variant a camera, scanner or web page produces. What
:func:`decode_photo` does with each, and why:

* **Empty, truncated or non-image files** return a reason string. JPEG and PNG are first checked for
  structure (:mod:`tfface.data.folder`'s JPEG marker walk and PNG ``IEND`` check), because OpenCV can
  turn a truncated JPEG into a half-grey picture with only a warning on stderr; the face in it would
  then be aligned from missing pixels without anyone noticing.
* **EXIF orientation** is applied (OpenCV does so unless asked for the raw buffer), so a portrait photo
  taken with a rotated phone is upright before detection; MTCNN finds few faces lying on their side.
* **16-bit** images (PNG, TIFF) are scaled to 8 bits with rounding (``v * 255 / 65535``).
* **Grayscale** becomes 3 equal channels; **alpha** is dropped (the colour under it is kept), as
  ``tf.io.decode_image(channels=3)`` does; palette images are expanded by the decoder.
* **CMYK JPEGs** (Adobe, e.g. from print workflows) are converted to RGB by OpenCV's libjpeg
  (checked against Pillow's conversion in ``tests/test_align_batch.py``).

Formats: the extensions in :data:`PHOTO_EXTENSIONS`. Decoding uses ``cv2.imdecode`` on bytes read in
one call, so a file that disappears or cannot be read also becomes a reason, not a crash.
"""

from __future__ import annotations

import cv2
import numpy as np

from tfface.data.folder import check_structure

#: File types tfface-align reads (case-insensitive). TIFF and WebP are accepted as photos even though
#: the training pipeline reads only JPEG/PNG/BMP: the aligned crops it writes are JPEG or PNG.
PHOTO_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# ANYDEPTH keeps 16-bit data (converted below with rounding rather than truncated by the decoder);
# ANYCOLOR keeps grey as one channel. Without IMREAD_UNCHANGED, OpenCV applies the EXIF orientation.
_FLAGS = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR


def _to_uint8(image: np.ndarray) -> np.ndarray | None:
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return None


def decode_photo(data: bytes) -> tuple[np.ndarray | None, str | None]:
    """Decodes one encoded photo.

    Returns:
      ``(image, None)`` with an RGB uint8 ``(H, W, 3)`` array, upright per its EXIF orientation, or
      ``(None, reason)`` when the bytes are not a readable image (empty, truncated, corrupt, unsupported).
    """
    if not data:
        return None, "empty file (0 bytes)"
    reason = check_structure(data)
    if reason is not None:
        return None, reason
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), _FLAGS)
    except cv2.error as e:  # e.g. an image larger than OpenCV's pixel limit
        return None, f"decoder error: {str(e).strip().splitlines()[-1]}"
    if image is None or image.size == 0:
        return None, f"not a decodable image (starts with {data[:8].hex(' ')})"
    converted = _to_uint8(image)
    if converted is None:
        return None, f"unsupported pixel type {image.dtype} (expected 8- or 16-bit)"
    if converted.ndim == 2 or converted.shape[2] == 1:
        return cv2.cvtColor(converted, cv2.COLOR_GRAY2RGB), None
    if converted.shape[2] == 3:
        return cv2.cvtColor(converted, cv2.COLOR_BGR2RGB), None
    if converted.shape[2] == 4:
        return cv2.cvtColor(converted, cv2.COLOR_BGRA2RGB), None
    return None, f"unsupported image with {converted.shape[2]} channels"


def read_photo(path: str) -> tuple[np.ndarray | None, str | None]:
    """Reads and decodes ``path`` (see :func:`decode_photo`); I/O errors become reasons too."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        return None, f"cannot read file: {e.strerror or e}"
    return decode_photo(data)
