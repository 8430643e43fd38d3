"""Tests for tfface.eval.image_sets: identity folders and distractor sets, with bad files counted."""

import cv2
import numpy as np
import pytest

from tfface.eval import image_sets as S


def embed(batch):
    """NumPy 'model': mean colour per image."""
    return batch.astype(np.float32).mean(axis=(1, 2)) + 1.0


def _png(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((6, 5, 3), colour, np.uint8))


def test_identity_folder_labels_and_skipped_files(tmp_path):
    for name, colour in (("ann", 30), ("bob", 90)):
        for k in range(3):
            _png(tmp_path / name / f"{k}.png", colour + k)
    (tmp_path / "bob" / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = S.embed_identity_folder(embed, str(tmp_path), flip_fusion="none")
    assert out.labels == ["ann"] * 3 + ["bob"] * 3
    assert out.embeddings.shape == (6, 3)
    np.testing.assert_allclose(np.linalg.norm(out.embeddings, axis=1), 1.0, rtol=1e-6)
    assert [p.rsplit("/", 1)[-1] for p, _ in out.bad_files] == ["bad.jpg"]


def test_embed_paths_chunks_give_the_same_embeddings(tmp_path):
    paths = []
    for k in range(7):
        _png(tmp_path / f"{k}.png", (20 * k, 5, 200 - 10 * k))
        paths.append(str(tmp_path / f"{k}.png"))
    whole = S.embed_paths(embed, paths, chunk=100)
    np.testing.assert_allclose(S.embed_paths(embed, paths, chunk=3, batch_size=2), whole, rtol=1e-6)
    with pytest.raises(ValueError, match="no images"):
        S.embed_paths(embed, [])


def test_distractors_from_a_nested_folder_or_a_npy(tmp_path):
    _png(tmp_path / "d" / "a" / "b" / "1.png", 10)
    _png(tmp_path / "d" / "2.png", 200)
    (tmp_path / "d" / "notes.txt").write_text("x")
    (tmp_path / "d" / "3.png").write_bytes(b"")
    out = S.embed_distractors(embed, str(tmp_path / "d"), 3, flip_fusion="none")
    assert out.embeddings.shape == (2, 3) and out.labels == []
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in out.bad_files) == ["3.png", "notes.txt"]

    np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32))
    npy = S.embed_distractors(None, str(tmp_path / "e.npy"), 3)
    assert isinstance(npy.embeddings, np.memmap) and npy.embeddings.shape == (5, 3)
    with pytest.raises(ValueError, match="have 3 dims but the model"):
        S.embed_distractors(None, str(tmp_path / "e.npy"), 4)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):  # object arrays need pickle: refused
        S.embed_distractors(None, str(tmp_path / "obj.npy"), 3)
    (tmp_path / "x.bin").write_bytes(b"123")
    with pytest.raises(ValueError, match="must be a .npy"):
        S.embed_distractors(None, str(tmp_path / "x.bin"), 3)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "bad.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable distractor images"):
        S.embed_distractors(embed, str(tmp_path / "empty"), 3)


def test_split_probes():
    probes = S.EmbeddedSet(np.eye(4, dtype=np.float32), ["a", "z", "b", "z"], [], [])
    mated, labels, nonmated = S.split_probes(["a", "b", "a"], probes)
    assert labels == ["a", "b"]
    np.testing.assert_array_equal(mated, np.eye(4)[[0, 2]])
    np.testing.assert_array_equal(nonmated, np.eye(4)[[1, 3]])
