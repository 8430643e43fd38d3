"""Tests of tfface.align.detect: MTCNN on a real photo (matplotlib's Grace Hopper) and on synthetic scenes
with known landmarks, the shrink-then-map-back path for huge photos, and select_face in pure NumPy."""

import cv2
import numpy as np
import pytest

from tfface.align.detect import Detection, FaceDetector, map_to_original, resize_for_detection, select_face
from tfface.align.templates import template
from tfface.align.transform import align_face, alignment_error, estimate_alignment
from tfface.data.synthetic_scenes import render_scene

# Two faces: a large one left of centre and a smaller one nearer the centre of a 300x400 (h x w) scene.
PAIR_LAYOUT = [(95, 150, 160, 5.0), (270, 150, 110, -5.0)]




@pytest.fixture(scope="module")
def hopper_faces(detector, hopper):
    return detector.detect(hopper)


def _det(box, score=0.99, landmarks=None):
    x1, y1, x2, y2 = box
    if landmarks is None:
        cx, cy, w = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1
        landmarks = [[cx - w / 4, cy - w / 8], [cx + w / 4, cy - w / 8], [cx, cy], [cx - w / 5, cy + w / 5],
                     [cx + w / 5, cy + w / 5]]
    return Detection(box=box, score=score, landmarks=landmarks)


# --- MTCNN on a real photo -------------------------------------------------------------------------------

def test_grace_hopper_face_box_score_and_landmark_order(hopper_faces):
    assert len(hopper_faces) == 1
    face = hopper_faces[0]
    assert face.score > 0.95
    np.testing.assert_allclose(face.box, [178, 110, 351, 330], atol=3)
    lm = face.landmarks
    assert lm.dtype == np.float32 and lm.shape == (5, 2)
    # tfface order: image-left eye, image-right eye, nose, image-left mouth corner, image-right mouth corner.
    assert lm[0, 0] < lm[2, 0] < lm[1, 0] and lm[3, 0] < lm[4, 0]
    assert max(lm[0, 1], lm[1, 1]) < lm[2, 1] < min(lm[3, 1], lm[4, 1])
    # Landmarks are floats, not the rounded integers of mtcnn's JSON output.
    assert np.any(np.abs(lm - np.round(lm)) > 0.05)


def test_landmarks_match_mtcnn_json_output(detector, hopper, hopper_faces):
    """Our reading of mtcnn's numpy rows (5 x then 5 y) agrees with the package's own JSON keypoints."""
    (ref,) = detector._mtcnn.detect_faces(hopper, box_format="xyxy")
    k = ref["keypoints"]
    expected = [k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]]
    np.testing.assert_allclose(hopper_faces[0].landmarks, np.array(expected, float), atol=0.51)


def test_grace_hopper_aligned_crop_matches_template(detector, hopper, hopper_faces):
    lm = hopper_faces[0].landmarks
    mean_res, max_res = alignment_error(estimate_alignment(lm), lm)
    assert mean_res < 3.0 and max_res < 4.0  # a frontal face is a near-similarity image of the template
    crop = align_face(hopper, lm, (112, 112))
    # Detected again inside the aligned crop (padded so the face is not the whole frame), the landmarks
    # sit on the template.
    canvas = np.full((224, 224, 3), 128, np.uint8)
    canvas[56:168, 56:168] = crop
    again = detector.detect(canvas)
    assert len(again) == 1
    np.testing.assert_allclose(again[0].landmarks - 56, template(112), atol=4.0)


def test_huge_photo_is_shrunk_for_detection_and_mapped_back(detector, hopper, hopper_faces):
    huge = cv2.resize(hopper, (4000, 5000), interpolation=cv2.INTER_LINEAR)  # W x H, 20 megapixels
    faces = detector.detect(huge)
    assert len(faces) == 1
    small, scale = resize_for_detection(huge, detector.max_side)
    assert small.shape == (1280, 1024, 3) and scale == pytest.approx((3.90625, 3.90625))
    # The same detection as running on the shrunk image and mapping back: it was detected small.
    unshrunk = FaceDetector(max_side=None).detect(small)
    np.testing.assert_allclose(faces[0].landmarks, map_to_original(unshrunk[0].landmarks, scale), atol=1e-2)
    np.testing.assert_allclose(faces[0].box, map_to_original(unshrunk[0].box.reshape(2, 2), scale).ravel(),
                               atol=1e-2)
    # And in full-resolution pixels: the original photo's landmarks scaled up, within 5% of the eye distance.
    expected = map_to_original(hopper_faces[0].landmarks, (4000 / 512, 5000 / 600))
    iod = np.linalg.norm(expected[1] - expected[0])
    assert np.linalg.norm(faces[0].landmarks - expected, axis=1).max() < 0.05 * iod


# --- synthetic scenes with known landmarks -----------------------------------------------------------------

def test_synthetic_scene_landmarks_close_to_truth(detector):
    image, (truth,) = render_scene(np.random.default_rng(3), (256, 256), 1, (110, 140))
    faces = detector.detect(image)
    assert len(faces) == 1
    iod = np.linalg.norm(truth[1] - truth[0])
    err = np.linalg.norm(faces[0].landmarks - truth, axis=1)
    assert err.max() < 0.15 * iod, (err, iod)  # measured: <= 2.4 px at an eye distance of 31 px


def test_blank_and_tiny_images_have_no_face(detector):
    for image in (np.zeros((240, 320, 3), np.uint8), np.full((8, 8, 3), 200, np.uint8)):
        faces = detector.detect(image)
        assert faces == []
        assert select_face(faces, image.shape) == (None, "no_face")


def test_two_face_scene_is_multi_face_and_policies_pick_the_right_one(detector):
    image, truths = render_scene(np.random.default_rng(100), (300, 400), layout=PAIR_LAYOUT)
    faces = detector.detect(image)
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score

    def which(face):
        return int(np.argmin([np.linalg.norm(face.landmarks - t, axis=1).mean() for t in truths]))

    largest, status = select_face(faces, image.shape, "largest")
    assert status == "multi_face" and which(largest) == 0
    central, status = select_face(faces, image.shape, "central")
    assert status == "multi_face" and which(central) == 1
    # Ignoring the lower-scoring face leaves one: ok.
    one, status = select_face(faces, image.shape, "central", min_score=(faces[0].score + faces[1].score) / 2)
    assert status == "ok" and one is faces[0]


# --- input checks --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image, error", [
    (np.zeros((50, 50, 3), np.float32), ValueError),
    (np.zeros((50, 50), np.uint8), ValueError),
    (np.zeros((50, 50, 4), np.uint8), ValueError),
    (np.zeros((0, 50, 3), np.uint8), ValueError),
    ([[[0, 0, 0]]], TypeError),
])
def test_detect_rejects_bad_images(detector, image, error):
    with pytest.raises(error):
        detector.detect(image)


@pytest.mark.parametrize("kwargs", [{"min_face_size": 0}, {"thresholds": (0.6, 0.7)}, {"thresholds": (0.6, 0.7, 2)},
                                    {"scale_factor": 1.0}, {"max_side": 16}, {"max_side": True}])
def test_detector_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError):
        FaceDetector(**kwargs)


# --- pure NumPy: Detection, select_face, resizing -------------------------------------------------------------

def test_detection_is_validated_read_only_and_serialisable():
    d = _det([10, 20, 50, 70], score=np.float64(0.9))
    assert d.box.dtype == np.float32 and d.landmarks.dtype == np.float32 and type(d.score) is float
    assert d.area == pytest.approx(40 * 50) and d.center.tolist() == [30.0, 45.0]
    with pytest.raises(ValueError):
        d.box[0] = 0
    with pytest.raises(AttributeError):
        d.score = 0.1
    assert d.to_dict()["box"] == [10.0, 20.0, 50.0, 70.0]
    with pytest.raises(ValueError):
        _det([1, 2, 3])
    with pytest.raises(ValueError):
        Detection(box=[0, 0, 1, 1], score=0.9, landmarks=np.zeros((4, 2)))
    with pytest.raises(ValueError):
        Detection(box=[0, 0, 1, np.nan], score=0.9, landmarks=np.zeros((5, 2)))


def test_select_face_rules():
    shape = (200, 300, 3)  # image centre (149.5, 99.5)
    big_corner = _det([0, 0, 120, 120], score=0.95)        # area 14400, centre far from the image centre
    small_centre = _det([135, 85, 165, 115], score=0.99)   # area 900, centre (150, 100)
    faint = _det([200, 100, 299, 199], score=0.5)
    assert select_face([], shape) == (None, "no_face")
    assert select_face([faint], shape, min_score=0.8) == (None, "no_face")
    assert select_face([faint], shape) == (faint, "ok")
    assert select_face([faint, small_centre], shape, min_score=0.8) == (small_centre, "ok")
    faces = [small_centre, big_corner, faint]
    assert select_face(faces, shape, "largest") == (big_corner, "multi_face")
    assert select_face(faces, shape, "central") == (small_centre, "multi_face")
    assert select_face(faces, shape, "largest", min_score=0.97) == (small_centre, "ok")
    # Equal areas: the higher score wins, whatever the input order.
    a, b = _det([0, 0, 10, 10], score=0.9), _det([50, 50, 60, 60], score=0.97)
    assert select_face([a, b], shape, "largest")[0] is b and select_face([b, a], shape, "largest")[0] is b


@pytest.mark.parametrize("kwargs, error", [
    ({"policy": "biggest"}, ValueError), ({"min_score": 1.5}, ValueError), ({"min_score": True}, ValueError),
    ({"image_shape": (0, 10)}, ValueError), ({"image_shape": 5}, ValueError), ({"detections": [(1, 2)]}, TypeError),
])
def test_select_face_rejects_bad_arguments(kwargs, error):
    args = {"detections": [_det([0, 0, 10, 10])], "image_shape": (20, 20, 3), **kwargs}
    with pytest.raises(error):
        select_face(**args)


def test_resize_for_detection_and_map_back_are_inverse():
    image = np.zeros((100, 200, 3), np.uint8)
    assert resize_for_detection(image, None)[1] == (1.0, 1.0)
    assert resize_for_detection(image, 200)[0] is image
    small, scale = resize_for_detection(image, 100)
    assert small.shape == (50, 100, 3) and scale == (2.0, 2.0)
    # Small pixel 0 covers original pixels 0 and 1, so its centre is at 0.5; the last small pixel's centre
    # is between original pixels 198 and 199.
    np.testing.assert_allclose(map_to_original([[0, 0], [99, 49]], scale), [[0.5, 0.5], [198.5, 98.5]])
    # The centroid of a block in the shrunk image maps onto the block's centre in the original.
    big = np.zeros((400, 600), np.float32)
    big[200:212, 300:312] = 1.0  # centre (305.5, 205.5)
    small, scale = resize_for_detection(big, 150)
    ys, xs = np.nonzero(small > 0)
    w = small[ys, xs]
    centre = [(xs * w).sum() / w.sum(), (ys * w).sum() / w.sum()]
    np.testing.assert_allclose(map_to_original([centre], scale)[0], [305.5, 205.5], atol=1e-6)
