"""Tests of tfface.align.batch (align_folder) and tfface.align.decode: the bad-input zoo, fallbacks, multi-face
handling, resuming, duplicates and per-photo errors. The zoo runs the real MTCNN in this process; the rest use a
stand-in detector so that they test the bookkeeping in milliseconds."""

import io
import json
import os

import cv2
import numpy as np
import pytest
from PIL import Image

from tfface.align.batch import align_folder, aligned_crop, center_crop
from tfface.align.decode import decode_photo, read_photo
from tfface.align.detect import Detection
from tfface.align.templates import template
from tfface.align.transform import align_face


def _png(rgb, dtype=np.uint8, alpha=None):
    pixels = rgb.astype(np.uint16) * 257 if dtype == np.uint16 else rgb
    bgr = pixels[..., ::-1]
    if alpha is not None:
        bgr = np.dstack([bgr, alpha.astype(bgr.dtype)])
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(bgr))
    assert ok
    return buf.tobytes()


def _jpeg(rgb, **pil_kwargs):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=95, **pil_kwargs)
    return buf.getvalue()


def _cmyk_jpeg(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def _write(root, rel, data: bytes):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return path


class FakeDetector:
    """Stand-in for FaceDetector: a bright pixel at (0, 0) means a face, at (0, 1) a second face too;
    a pixel value of 7 at (0, 2) raises (a detector crash on that photo)."""

    def detect(self, image):
        if image[0, 2, 0] == 7:
            raise RuntimeError("detector exploded")
        h, w = image.shape[:2]
        lm = template(112) * (min(h, w) / 112)
        faces = []
        if image[0, 0, 0] > 200:
            faces.append(Detection(box=[0, 0, w - 1, h - 1], score=0.99, landmarks=lm))
        if image[0, 1, 0] > 200:
            faces.append(Detection(box=[0, 0, 10, 10], score=0.95, landmarks=lm * 0.1))
        return faces


def _scene(value, faces=1, size=(40, 60)):
    image = np.full((*size, 3), value, np.uint8)
    if faces >= 1:
        image[0, 0] = 255
    if faces >= 2:
        image[0, 1] = 255
    return _png(image)


def _outputs(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# --- decoding ---------------------------------------------------------------------------------------------------

def test_decode_variants(hopper):
    rgb = hopper
    for data in (_png(rgb), _png(rgb, np.uint16), _png(rgb, alpha=np.full(rgb.shape[:2], 100))):
        image, reason = decode_photo(data)
        assert reason is None and image.dtype == np.uint8 and image.shape == rgb.shape
        np.testing.assert_array_equal(image, rgb)  # 16 bit -> 8 bit rounds back exactly; alpha dropped
    grey, reason = decode_photo(cv2.imencode(".png", rgb[..., 1])[1].tobytes())
    assert reason is None and grey.shape == rgb.shape
    assert np.array_equal(grey[..., 0], rgb[..., 1]) and np.array_equal(grey[..., 2], rgb[..., 1])
    cmyk, reason = decode_photo(_cmyk_jpeg(rgb))
    pillow = np.asarray(Image.open(io.BytesIO(_cmyk_jpeg(rgb))).convert("RGB"))
    assert reason is None and cmyk.shape == rgb.shape
    assert np.abs(cmyk.astype(int) - rgb).mean() < 3 and np.abs(cmyk.astype(int) - pillow).mean() < 3


def test_decode_applies_exif_orientation(hopper):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    upright, _ = decode_photo(_jpeg(hopper))
    rotated, reason = decode_photo(_jpeg(hopper, exif=exif))
    assert reason is None and rotated.shape == (hopper.shape[1], hopper.shape[0], 3)
    assert np.abs(rotated.astype(int) - np.rot90(upright, k=-1)).mean() < 1


@pytest.mark.parametrize("data, words", [
    (b"", "empty file"),
    (b"this is a text file, not a JPEG", "not a decodable image"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40), "JPEG"),
    (b"\x89PNG\r\n\x1a\n" + bytes(30), "truncated PNG"),
])
def test_decode_bad_bytes_give_reasons(data, words):
    image, reason = decode_photo(data)
    assert image is None and words in reason


def test_decode_truncated_jpeg_and_missing_file(hopper, tmp_path):
    data = _jpeg(hopper)
    image, reason = decode_photo(data[: len(data) // 2])
    assert image is None and "truncated JPEG" in reason
    image, reason = read_photo(str(tmp_path / "missing.jpg"))
    assert image is None and reason.startswith("cannot read file")


# --- the bad-input zoo through align_folder, real MTCNN ------------------------------------------------------------

def test_bad_input_zoo_is_counted_listed_and_good_photos_aligned(tmp_path, hopper, detector):
    src, dst = tmp_path / "src", tmp_path / "dst"
    good = {
        "ada/plain.png": _png(hopper),
        "ada/sixteen_bit.png": _png(hopper, np.uint16),
        "ada/cmyk.jpg": _cmyk_jpeg(hopper),
        "bob/grey.jpg": _jpeg(np.asarray(Image.fromarray(hopper).convert("L"))),
        "bob/rgba.png": _png(hopper, alpha=np.full(hopper.shape[:2], 255)),
        # 3000x2560: shrunk to 1280 for detection, warped from the full resolution.
        "cy/huge.jpg": _jpeg(cv2.resize(hopper, None, fx=5, fy=5, interpolation=cv2.INTER_LINEAR)),
    }
    truncated = _jpeg(hopper)
    bad = {
        "bob/corrupt.jpg": truncated[: len(truncated) * 2 // 3],
        "bob/text.jpg": b"not an image\n",
        "cy/empty.jpg": b"",
    }
    for rel, data in {**good, **bad}.items():
        _write(src, rel, data)
    _write(src, "README.txt", b"files at the root belong to no identity")
    _write(src, "cy/notes.txt", b"not a photo type")
    report = align_folder(src, dst, num_workers=1, detector=detector, progress=False)

    c = report["counts"]
    assert (c["total"], c["ok"], c["unreadable"], c["written"], c["ignored"]) == (9, 6, 3, 6, 2)
    assert c["total"] == sum(c[k] for k in ("ok", "multi_face", "no_face", "unreadable", "error",
                                             "duplicate_output", "skipped_existing"))
    failures = {f["path"]: f for f in report["failures"]}
    assert set(failures) == set(bad)
    assert all(f["status"] == "unreadable" and not f["written"] for f in failures.values())
    assert "truncated JPEG" in failures["bob/corrupt.jpg"]["reason"]
    assert "empty file" in failures["cy/empty.jpg"]["reason"]
    assert {i["path"] for i in report["ignored"]} == {"README.txt", "cy/notes.txt"}
    assert _outputs(dst) == sorted(["align_report.json"] + [os.path.splitext(r)[0] + ".jpg" for r in good])
    # The 16-bit and RGBA files decode to the plain PNG's pixels, so their crops are identical; the lossy
    # CMYK and grey JPEGs give nearly the same crop (grey: in luminance).
    reference = cv2.imread(str(dst / "ada/plain.jpg"))
    for rel in ("ada/sixteen_bit.jpg", "bob/rgba.jpg"):
        np.testing.assert_array_equal(cv2.imread(str(dst / rel)), reference, err_msg=rel)
    assert np.abs(cv2.imread(str(dst / "ada/cmyk.jpg")).astype(int) - reference).mean() < 8
    # Blurred comparisons: MTCNN's landmarks move by 1-3 px on this face between resolutions of the photo
    # (detector noise, no systematic offset), which moves fine texture. The huge photo's crop (detected
    # 2.3x smaller, landmarks mapped back, cut from the full resolution) must be closer to the reference
    # than the reference shifted by 5 crop pixels.
    blur = lambda x: cv2.GaussianBlur(x.astype(np.float32), (0, 0), 3)  # noqa: E731
    huge = cv2.imread(str(dst / "cy/huge.jpg"))
    shifted = np.abs(blur(np.roll(reference, 5, axis=1)) - blur(reference))[8:-8, 8:-8].mean()
    assert np.abs(blur(huge) - blur(reference))[8:-8, 8:-8].mean() < shifted
    grey = cv2.imread(str(dst / "bob/grey.jpg"), cv2.IMREAD_GRAYSCALE).astype(np.float32)
    luminance = cv2.cvtColor(reference, cv2.COLOR_BGR2GRAY).astype(np.float32)
    blurred_diff = np.abs(blur(grey) - blur(luminance)).mean()
    assert blurred_diff < 6, blurred_diff
    assert json.loads((dst / "align_report.json").read_text()) == report
    assert report["complete"] and report["settings"]["size"] == [112, 112]


# --- bookkeeping with the stand-in detector ----------------------------------------------------------------------

def test_aligned_crop_averages_instead_of_aliasing_large_faces():
    """Binary noise shrunk 6x: area averaging leaves std ~ 127.5 / 6; point sampling keeps most of it."""
    noise = (np.random.default_rng(0).integers(0, 2, (672, 672, 1)) * 255).astype(np.uint8).repeat(3, 2)
    lm = (template(112) + 0.5) * 6 - 0.5  # the template at 6x: a pure 1/6 scaling
    smooth, aliased = aligned_crop(noise, lm, 112), align_face(noise, lm, 112)
    assert abs(smooth.mean() - 127.5) < 3 and smooth.std() < 26 and aliased.std() > 50
    # Shrinking by less than 2x is left to the plain warp, unchanged.
    lm = (template(112) + 0.5) * 1.5 - 0.5
    np.testing.assert_array_equal(aligned_crop(noise[:168, :168], lm, 112), align_face(noise[:168, :168], lm, 112))


def test_center_crop_takes_the_largest_centred_region():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 50:150] = 255  # the centred 100x100 square is white, the sides black
    assert center_crop(image, (112, 112)).min() == 255
    tall = np.zeros((300, 100, 3), np.uint8)
    tall[75:225] = 200  # with a 3:2 (h:w) output the crop is the middle 150 rows
    assert center_crop(tall, (96, 64)).shape == (96, 64, 3) and center_crop(tall, (96, 64)).min() == 200


def test_no_face_fallback_skip_versus_center_crop(tmp_path):
    src = tmp_path / "src"
    blank = np.full((60, 90, 3), 40, np.uint8)
    blank[:, 40:50] = 90
    _write(src, "a/blank.png", _png(blank))
    skip = align_folder(src, tmp_path / "skip", num_workers=1, detector=FakeDetector(), progress=False)
    assert skip["counts"]["no_face"] == 1 and skip["counts"]["written"] == 0
    assert skip["failures"][0]["status"] == "no_face" and not skip["failures"][0]["written"]
    assert _outputs(tmp_path / "skip") == ["align_report.json"]
    crop = align_folder(src, tmp_path / "crop", num_workers=1, detector=FakeDetector(), fallback="center_crop",
                        image_format="png", progress=False)
    assert crop["counts"]["no_face_center_cropped"] == 1 and crop["counts"]["written"] == 1
    assert "centre crop written" in crop["failures"][0]["reason"]
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "crop/a/blank.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, center_crop(blank, (112, 112)))


def test_multi_face_pick_versus_skip_and_detector_errors(tmp_path):
    src = tmp_path / "src"
    _write(src, "a/one.png", _scene(100, faces=1))
    _write(src, "a/two.png", _scene(100, faces=2))
    boom = np.full((40, 60, 3), 100, np.uint8)
    boom[0, 2] = 7
    _write(src, "b/boom.png", _png(boom))
    pick = align_folder(src, tmp_path / "pick", num_workers=1, detector=FakeDetector(), progress=False)
    c = pick["counts"]
    assert (c["ok"], c["multi_face"], c["error"], c["written"]) == (1, 1, 1, 2)
    failures = {f["path"]: f for f in pick["failures"]}
    two = failures["a/two.png"]
    assert two["status"] == "multi_face" and two["faces"] == 2 and two["chosen"] == 0 and two["written"]
    assert "2 faces" in two["reason"] and "largest" in two["reason"]
    assert failures["b/boom.png"]["status"] == "error" and "detector exploded" in failures["b/boom.png"]["reason"]
    # The picked face is the full-frame one: its crop is the photo warped by that face's landmarks.
    expected = align_face(cv2.imread(str(src / "a/two.png"))[..., ::-1].copy(), template(112) * 40 / 112)
    got = cv2.imread(str(tmp_path / "pick/a/two.jpg"))[..., ::-1]
    assert np.abs(got.astype(int) - expected).mean() < 2
    skip = align_folder(src, tmp_path / "skip", num_workers=1, detector=FakeDetector(), multi_face="skip",
                        progress=False)
    assert skip["counts"]["multi_face"] == 1 and skip["counts"]["written"] == 1
    assert not os.path.exists(tmp_path / "skip/a/two.jpg")


def test_resume_skips_complete_crops_and_ignores_stale_temp_files(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    for i in range(3):
        _write(src, f"p{i}/x.png", _scene(50 + i))
    _write(src, "p0/two.png", _scene(80, faces=2))
    _write(src, "p0/none.png", _scene(90, faces=0))
    first = align_folder(src, dst, num_workers=1, detector=FakeDetector(), progress=False)
    assert first["counts"]["written"] == 4 and first["counts"]["no_face"] == 1
    mtimes = {p: os.stat(dst / p).st_mtime_ns for p in _outputs(dst) if p.endswith(".jpg")}

    second = align_folder(src, dst, num_workers=1, detector=FakeDetector(), progress=False)
    c = second["counts"]
    assert (c["written"], c["skipped_existing"], c["no_face"], c["multi_face"]) == (0, 4, 1, 0)
    assert {p: os.stat(dst / p).st_mtime_ns for p in mtimes} == mtimes
    # The multi-face crop of the first run stays listed; the no-face photo was retried (and listed anew).
    kept = [f for f in second["failures"] if f.get("run") == "previous"]
    assert [f["path"] for f in kept] == ["p0/two.png"]
    assert [f["path"] for f in second["failures"] if f.get("run") != "previous"] == ["p0/none.png"]

    # A killed run: one crop missing, a temporary file of the interrupted write next to where it belongs.
    os.remove(dst / "p1/x.jpg")
    (dst / "p1/.x.jpg.abc123.tmp").write_bytes(b"half a JPEG")
    third = align_folder(src, dst, num_workers=1, detector=FakeDetector(), progress=False)
    assert third["counts"]["written"] == 1 and third["counts"]["skipped_existing"] == 3
    assert cv2.imread(str(dst / "p1/x.jpg")).shape == (112, 112, 3)


def test_duplicate_outputs_are_reported_not_overwritten(tmp_path):
    src = tmp_path / "src"
    _write(src, "a/photo.jpg", _jpeg(np.full((40, 60, 3), 255, np.uint8)))
    _write(src, "a/photo.png", _scene(10))
    report = align_folder(src, tmp_path / "dst", num_workers=1, detector=FakeDetector(), progress=False)
    assert report["counts"]["duplicate_output"] == 1 and report["counts"]["written"] == 1
    (dup,) = [f for f in report["failures"] if f["status"] == "duplicate_output"]
    assert dup["path"] == "a/photo.png" and "a/photo.jpg" in dup["reason"]
    assert cv2.imread(str(tmp_path / "dst/a/photo.jpg")).mean() > 200  # the .jpg source's crop, not the dark .png


def test_refuses_bad_folders_and_incompatible_resume(tmp_path):
    src = tmp_path / "src"
    _write(src, "a/x.png", _scene(10))
    fake = FakeDetector()
    with pytest.raises(FileNotFoundError):
        align_folder(tmp_path / "missing", tmp_path / "out", num_workers=1, detector=fake)
    with pytest.raises(ValueError, match="inside the source"):
        align_folder(src, src / "aligned", num_workers=1, detector=fake)
    with pytest.raises(ValueError, match="inside the output"):
        align_folder(src, tmp_path, num_workers=1, detector=fake)
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign/data.csv").write_text("x")
    with pytest.raises(ValueError, match="not written by tfface-align"):
        align_folder(src, tmp_path / "foreign", num_workers=1, detector=fake)
    align_folder(src, tmp_path / "dst", num_workers=1, detector=fake, progress=False)
    with pytest.raises(ValueError, match="size"):
        align_folder(src, tmp_path / "dst", size=(112, 96), num_workers=1, detector=fake)
    for kwargs in ({"policy": "biggest"}, {"fallback": "blur"}, {"multi_face": "all"}, {"image_format": "gif"},
                   {"jpeg_quality": 0}, {"min_score": 2.0}, {"num_workers": 0}, {"num_workers": 2},
                   {"min_face_size": 0}, {"thresholds": (0.5, 0.5)}, {"max_side": 8}):
        with pytest.raises(ValueError):
            align_folder(src, tmp_path / "dst2", **{"num_workers": 1, "detector": fake, **kwargs})
