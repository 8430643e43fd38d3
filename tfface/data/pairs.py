"""LFW-style verification pairs files (``pairs.txt``): read, write, and the image naming they imply.

Format (LFW View 2, Huang et al. 2007)::

    10\t300                 <- header: number of folds, pairs of each kind per fold
    Name\t1\t4              <- n matched pairs   "name i j"          (same person, images i and j)
    Name1\t2\tName2\t7      <- n mismatched pairs "name1 i name2 j"   (different people)
    ...                     <- repeated for every fold: n matched lines, then n mismatched lines

``pairsDevTrain.txt`` / ``pairsDevTest.txt`` (LFW View 1) have a single-number header ``1100``: one fold.
Files without a header line (pairs lists cut from other tools) are read too: each line is classified by
its field count (3 = matched, 4 = mismatched), in any order, as one fold.
Fields are whitespace separated (LFW uses tabs); image indices are 1-based and map to
``Name/Name_0001.jpg`` (4 digits) relative to the image root. Blank lines are ignored.

Pairs between any two images (e.g. an ID-photo folder and a selfie folder) are a CSV file instead, read
by :func:`read_pairs_csv`::

    left,right,same,fold            <- header; 'fold' is optional
    alice/id.jpg,alice/selfie1.jpg,1,0
    alice/id.jpg,bob/selfie3.jpg,0,0
"""

import csv
import dataclasses
import os

import numpy as np

from tfface.fileio import atomic_write_text


@dataclasses.dataclass
class PairList:
    """Verification pairs: ``left[k]``/``right[k]`` are image paths relative to the image root."""

    left: list[str]
    right: list[str]
    issame: np.ndarray  # bool (P,)
    fold: np.ndarray  # int32 (P,), 0..n_folds-1
    n_folds: int

    def __len__(self) -> int:
        return len(self.left)


def image_relpath(name: str, index: int, ext: str = ".jpg") -> str:
    """LFW image path for the ``index``-th (1-based) image of ``name``: ``'Name/Name_0001.jpg'``."""
    if int(index) < 1:
        raise ValueError(f"image index must be >= 1 (LFW indices are 1-based), got {index}")
    return f"{name}/{name}_{int(index):04d}{ext}"


def _parse_index(token: str, where: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ValueError(f"{where}: image index {token!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{where}: image index {value} must be >= 1 (1-based)")
    return value


def read_pairs(path, ext: str = ".jpg") -> PairList:
    """Reads an LFW-format pairs file (``pairs.txt`` or ``pairsDevTrain.txt`` style).

    Raises:
      ValueError naming the file and the 1-based line number on a malformed header or pair line, and
      when the file holds fewer or more pair lines than its header announces.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        lines = [(no, line.split()) for no, line in enumerate(f, start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{path}: empty pairs file (expected a header 'n_folds n' or 'n')")
    hno, header = lines[0]
    try:
        nums = [int(t) for t in header]
    except ValueError:
        nums = []
    if not nums and len(header) in (3, 4):
        return _read_headerless(path, lines, ext)
    if len(nums) == 2:
        n_folds, n = nums
    elif len(nums) == 1:
        n_folds, n = 1, nums[0]
    else:
        raise ValueError(f"{path}:{hno}: bad header {' '.join(header)!r}; expected 'n_folds n' or 'n'")
    if n_folds < 1 or n < 1:
        raise ValueError(f"{path}:{hno}: header numbers must be positive, got {' '.join(header)!r}")
    body = lines[1:]
    expected = n_folds * 2 * n
    if len(body) != expected:
        raise ValueError(f"{path}: header announces {n_folds} fold(s) x {n} matched + {n} mismatched = "
                         f"{expected} pair lines, found {len(body)}")
    left, right, issame, fold = [], [], [], []
    for k, (no, tok) in enumerate(body):
        matched = (k % (2 * n)) < n
        where = f"{path}:{no}"
        if matched:
            if len(tok) != 3:
                raise ValueError(f"{where}: expected a matched pair 'name i j' (fold {k // (2 * n) + 1}), "
                                 f"got {len(tok)} fields: {' '.join(tok)!r}")
            name1, i, name2, j = tok[0], tok[1], tok[0], tok[2]
        else:
            if len(tok) != 4:
                raise ValueError(f"{where}: expected a mismatched pair 'name1 i name2 j' "
                                 f"(fold {k // (2 * n) + 1}), got {len(tok)} fields: {' '.join(tok)!r}")
            name1, i, name2, j = tok
        left.append(image_relpath(name1, _parse_index(i, where), ext))
        right.append(image_relpath(name2, _parse_index(j, where), ext))
        issame.append(matched)
        fold.append(k // (2 * n))
    return PairList(left, right, np.array(issame, bool), np.array(fold, np.int32), n_folds)


def _read_headerless(path, lines, ext) -> PairList:
    """Pair lines with no header: 'name i j' is matched, 'name1 i name2 j' mismatched; one fold."""
    left, right, issame = [], [], []
    for no, tok in lines:
        where = f"{path}:{no}"
        if len(tok) == 3:
            name1, i, name2, j = tok[0], tok[1], tok[0], tok[2]
        elif len(tok) == 4:
            name1, i, name2, j = tok
        else:
            raise ValueError(f"{where}: expected 'name i j' (matched) or 'name1 i name2 j' (mismatched), "
                             f"got {len(tok)} fields: {' '.join(tok)!r}")
        left.append(image_relpath(name1, _parse_index(i, where), ext))
        right.append(image_relpath(name2, _parse_index(j, where), ext))
        issame.append(len(tok) == 3)
    return PairList(left, right, np.array(issame, bool), np.zeros(len(left), np.int32), 1)


def _check_name(name, what):
    if not isinstance(name, str) or not name or any(c.isspace() for c in name):
        raise ValueError(f"{what}: identity name must be a non-empty string without whitespace, got {name!r}")


def write_pairs(path, folds) -> None:
    """Writes an LFW-format pairs file atomically (temporary file in the same folder + ``os.replace``).

    Args:
      path: destination file.
      folds: list of ``(matched, mismatched)``; ``matched`` is a list of ``(name, i, j)``, ``mismatched`` a
        list of ``(name1, i, name2, j)`` (1-based indices). Every fold must hold the same number ``n`` of
        matched and of mismatched pairs (the LFW header has a single ``n``).
    """
    folds = list(folds)
    if not folds:
        raise ValueError("write_pairs: need at least one fold")
    n = len(folds[0][0])
    out = [f"{len(folds)}\t{n}\n"]
    for f, (matched, mismatched) in enumerate(folds):
        if len(matched) != n or len(mismatched) != n:
            raise ValueError(f"write_pairs: fold {f} has {len(matched)} matched and {len(mismatched)} "
                             f"mismatched pairs; every fold needs exactly {n} of each")
        for name, i, j in matched:
            _check_name(name, f"fold {f} matched")
            out.append(f"{name}\t{_parse_index(str(i), f'fold {f}')}\t{_parse_index(str(j), f'fold {f}')}\n")
        for name1, i, name2, j in mismatched:
            _check_name(name1, f"fold {f} mismatched")
            _check_name(name2, f"fold {f} mismatched")
            out.append(f"{name1}\t{_parse_index(str(i), f'fold {f}')}\t"
                       f"{name2}\t{_parse_index(str(j), f'fold {f}')}\n")
    atomic_write_text(path, "".join(out))


_TRUE = {"1", "true", "yes", "same"}
_FALSE = {"0", "false", "no", "different"}


def read_pairs_csv(path) -> PairList:
    """Reads a pairs CSV with header ``left,right,same`` and an optional ``fold`` column.

    ``left`` and ``right`` are image paths (relative to the left and right image folders); ``same`` is
    1/0, true/false, yes/no or same/different; ``fold`` an integer fold id (renumbered 0..K-1 in sorted
    order). Without ``fold`` the list is one fold (evaluation then uses 10 contiguous folds).

    Raises:
      ValueError naming the file and line on a missing column, an empty path or a bad value.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in ("left", "right", "same") if c not in header]
        if missing:
            raise ValueError(f"{path}: header {header} lacks column(s) {missing}; expected left,right,same[,fold]")
        reader.fieldnames = header
        has_fold = "fold" in header
        left, right, issame, fold = [], [], [], []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
                continue  # blank line
            a, b = (row.get("left") or "").strip(), (row.get("right") or "").strip()
            if not a or not b:
                raise ValueError(f"{where}: empty image path (left={a!r}, right={b!r})")
            same = (row.get("same") or "").strip().lower()
            if same not in _TRUE | _FALSE:
                raise ValueError(f"{where}: 'same' must be 1/0, true/false, yes/no or same/different, got {same!r}")
            if has_fold:
                token = (row.get("fold") or "").strip()
                try:
                    fold.append(int(token))
                except ValueError:
                    raise ValueError(f"{where}: fold {token!r} is not an integer") from None
            left.append(a)
            right.append(b)
            issame.append(same in _TRUE)
    if not left:
        raise ValueError(f"{path}: no pairs")
    if has_fold:
        ids, fold_index = np.unique(np.array(fold), return_inverse=True)
        return PairList(left, right, np.array(issame, bool), fold_index.astype(np.int32), int(ids.size))
    return PairList(left, right, np.array(issame, bool), np.zeros(len(left), np.int32), 1)
