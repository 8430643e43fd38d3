"""Tests for tfface.data.pairs: LFW pairs.txt reading/writing and image naming."""

import os

import numpy as np
import pytest

from tfface.data.pairs import PairList, image_relpath, read_pairs, write_pairs

LFW_EXCERPT = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Abdullah_Gul\t13\t14
Abdullah_Gul\t13\t16
Abdel_Aziz_Al-Hakim\t1\tFranco_Cangini\t1
Abdullah_Gul\t11\tJacques_Chirac\t7
"""


def _write(tmp_path, text, name="pairs.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_image_relpath_lfw_naming():
    assert image_relpath("Abel_Pacheco", 1) == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert image_relpath("ho_00007", 23, ext=".png") == "ho_00007/ho_00007_0023.png"
    with pytest.raises(ValueError, match="1-based"):
        image_relpath("x", 0)


def test_read_lfw_format(tmp_path):
    pl = read_pairs(_write(tmp_path, LFW_EXCERPT))
    assert isinstance(pl, PairList) and pl.n_folds == 2 and len(pl) == 8
    assert pl.left[0] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert pl.right[0] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"
    assert pl.left[2] == "Abdel_Madi_Shabneh/Abdel_Madi_Shabneh_0001.jpg"
    assert pl.right[2] == "Dean_Barker/Dean_Barker_0001.jpg"
    assert pl.right[7] == "Jacques_Chirac/Jacques_Chirac_0007.jpg"
    np.testing.assert_array_equal(pl.issame, [1, 1, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(pl.fold, [0, 0, 0, 0, 1, 1, 1, 1])
    assert pl.issame.dtype == bool and pl.fold.dtype == np.int32


def test_read_dev_train_single_number_header(tmp_path):
    text = "2\nA\t1\t2\nB 2 3\nA 1 B 1\nB\t3\tA\t2\n\n"  # mixed whitespace and a trailing blank line
    pl = read_pairs(_write(tmp_path, text, "pairsDevTrain.txt"))
    assert pl.n_folds == 1 and len(pl) == 4
    np.testing.assert_array_equal(pl.issame, [True, True, False, False])
    np.testing.assert_array_equal(pl.fold, 0)


def test_round_trip(tmp_path):
    folds = [([("a", 1, 2), ("b", 1, 3)], [("a", 1, "b", 2), ("c", 4, "a", 2)]),
             ([("c", 2, 3), ("d", 1, 2)], [("c", 1, "d", 1), ("d", 2, "c", 3)])]
    path = tmp_path / "out" / "pairs.txt"
    os.makedirs(path.parent)
    write_pairs(path, folds)
    assert path.read_text().splitlines()[0] == "2\t2"
    assert os.listdir(path.parent) == ["pairs.txt"]  # no temporary file left behind
    pl = read_pairs(path)
    assert pl.n_folds == 2
    assert pl.left == ["a/a_0001.jpg", "b/b_0001.jpg", "a/a_0001.jpg", "c/c_0004.jpg",
                       "c/c_0002.jpg", "d/d_0001.jpg", "c/c_0001.jpg", "d/d_0002.jpg"]
    assert pl.right[3] == "a/a_0002.jpg"
    np.testing.assert_array_equal(pl.issame, [1, 1, 0, 0] * 2)


def test_read_headerless_pairs(tmp_path):
    # No header: lines classified by field count, in any order, one fold.
    pl = read_pairs(_write(tmp_path, "Ann\t1\tBob\t2\nAnn\t1\t3\n\nBob 2 4\n"))
    assert pl.left == ["Ann/Ann_0001.jpg", "Ann/Ann_0001.jpg", "Bob/Bob_0002.jpg"]
    assert pl.right == ["Bob/Bob_0002.jpg", "Ann/Ann_0003.jpg", "Bob/Bob_0004.jpg"]
    np.testing.assert_array_equal(pl.issame, [False, True, True])
    assert pl.n_folds == 1 and not pl.fold.any()
    with pytest.raises(ValueError, match=r"pairs.txt:2: expected 'name i j' \(matched\)"):
        read_pairs(_write(tmp_path, "Ann 1 2\nAnn 1 Bob 2 extra\n"))


@pytest.mark.parametrize("text, pattern", [
    ("", "empty pairs file"),
    ("ten folds\nA 1 2\nA 1 B 2\n", r"pairs.txt:1: bad header"),
    ("1\t1\nA 1\nA 1 B 2\n", r"pairs.txt:2: expected a matched pair"),
    ("1\t1\nA 1 2\nA 1 B\n", r"pairs.txt:3: expected a mismatched pair"),
    ("1\t1\nA 1 x\nA 1 B 2\n", r"pairs.txt:2: image index 'x' is not an integer"),
    ("1\t1\n\nA 1 2\nA 0 B 2\n", r"pairs.txt:4: image index 0 must be >= 1"),
    ("2\t1\nA 1 2\nA 1 B 2\n", r"announces 2 fold\(s\) x 1 matched \+ 1 mismatched = 4 pair lines, found 2"),
    ("1\t1\nA 1 2\nA 1 B 2\nC 1 2\n", "found 3"),
])
def test_malformed_files_name_file_and_line(tmp_path, text, pattern):
    with pytest.raises(ValueError, match=pattern):
        read_pairs(_write(tmp_path, text))


def test_write_pairs_validates(tmp_path):
    with pytest.raises(ValueError, match="fold 1 has 1 matched and 0 mismatched"):
        write_pairs(tmp_path / "p.txt", [([("a", 1, 2)], [("a", 1, "b", 1)]), ([("a", 1, 2)], [])])
    with pytest.raises(ValueError, match="without whitespace"):
        write_pairs(tmp_path / "p.txt", [([("a b", 1, 2)], [("a", 1, "b", 1)])])
    with pytest.raises(ValueError, match="must be >= 1"):
        write_pairs(tmp_path / "p.txt", [([("a", 0, 2)], [("a", 1, "b", 1)])])
    assert not (tmp_path / "p.txt").exists()


def test_read_pairs_csv(tmp_path):
    from tfface.data.pairs import read_pairs_csv

    path = tmp_path / "pairs.csv"
    path.write_text("left,right,same,fold\nid/a.jpg,selfie/a1.jpg,1,7\n\nid/a.jpg,selfie/b1.jpg,different,3\n"
                    "id/b.jpg,selfie/b2.jpg,TRUE,7\n")
    pl = read_pairs_csv(path)
    assert pl.left == ["id/a.jpg", "id/a.jpg", "id/b.jpg"] and pl.right[1] == "selfie/b1.jpg"
    np.testing.assert_array_equal(pl.issame, [True, False, True])
    np.testing.assert_array_equal(pl.fold, [1, 0, 1])  # renumbered in sorted order: 3 -> 0, 7 -> 1
    assert pl.n_folds == 2
    path.write_text("right,left,same\nb.jpg,a.jpg,0\n")  # column order is free; no fold column: one fold
    pl = read_pairs_csv(path)
    assert pl.left == ["a.jpg"] and pl.n_folds == 1 and not pl.issame[0]


@pytest.mark.parametrize("text,match", [
    ("left,right\na,b\n", "lacks column"),
    ("left,right,same\na,b,maybe\n", r"pairs.csv:2: 'same' must be"),
    ("left,right,same\na,,1\n", "empty image path"),
    ("left,right,same,fold\na,b,1,x\n", "fold 'x' is not an integer"),
    ("left,right,same\n", "no pairs"),
])
def test_read_pairs_csv_errors_name_the_line(tmp_path, text, match):
    from tfface.data.pairs import read_pairs_csv

    path = tmp_path / "pairs.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_pairs_csv(path)
