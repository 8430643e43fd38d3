"""Atomic writes: the target holds the old or the new content, never a partial one, and no temp file is left."""

import os

import pytest

from tfface.fileio import atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_writes_replace_the_target(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(str(path), b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    atomic_write_text(str(path), "héllo")
    assert path.read_text(encoding="utf-8") == "héllo"
    atomic_write_json(str(path), {"b": 1, "a": [2]})
    assert path.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    assert os.listdir(path.parent) == ["f.bin"]


def test_failure_inside_the_block_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "w", encoding="utf-8") as fh:
            fh.write("half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(str(tmp_path / "report.json"), "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o644
