import json

import pytest

from ppg.train.checkpoint import COMPLETE, IDENT, POINTER, find_resume, workdir_for

CONFIG = {"model": "tiny", "train": {"reduction": "sum", "batch_size": 2}}


def make(work, step, fp="fp", complete=True):
    d = work / f"step-{step:07d}"
    d.mkdir(parents=True)
    (d / "mp_rank_00_model_states.pt").write_bytes(b"x")
    if complete:
        (d / COMPLETE).write_text(json.dumps({"step": step, "fingerprint": fp, "config": CONFIG}))


def point(work, step):
    (work / POINTER).write_text(json.dumps({"tag": f"step-{step:07d}", "step": step, "fingerprint": "fp"}))


def test_fresh_start_when_there_is_no_checkpoint(tmp_path):
    assert find_resume(tmp_path / "none", "fp", CONFIG) is None


def test_the_pointer_names_the_checkpoint(tmp_path):
    make(tmp_path, 5)
    make(tmp_path, 10)
    point(tmp_path, 5)
    assert find_resume(tmp_path, "fp", CONFIG) == ("step-0000005", 5)


@pytest.mark.parametrize("damage", ["truncated", "missing", "incomplete", "garbage"])
def test_a_bad_pointer_is_reported_and_the_newest_complete_checkpoint_used(tmp_path, capsys, damage):
    make(tmp_path, 5)
    make(tmp_path, 10)
    make(tmp_path, 15, complete=False)  # killed while saving: no completion marker
    point(tmp_path, 15 if damage == "incomplete" else 10)
    pointer = tmp_path / POINTER
    if damage == "truncated":
        pointer.write_text(pointer.read_text()[:9])
    elif damage == "missing":
        pointer.unlink()
    elif damage == "garbage":
        pointer.write_bytes(b"\x00\x00\x00")
    assert find_resume(tmp_path, "fp", CONFIG) == ("step-0000010", 10)
    err = capsys.readouterr().err
    assert ("missing" if damage == "missing" else "is unusable") in err and "newest complete" in err


def test_a_checkpoint_of_another_fingerprint_is_never_a_resume_point(tmp_path, capsys):
    make(tmp_path, 5)
    point(tmp_path, 5)
    now = {"model": "tiny", "train": {"reduction": "mean", "batch_size": 2}}
    assert find_resume(tmp_path, "other", now) is None
    assert "changed: train.reduction" in capsys.readouterr().err


def test_a_new_fingerprint_starts_fresh_and_removes_the_old_folders_naming_what_changed(tmp_path):
    said = []
    old = workdir_for(tmp_path / "k3", "aaaa", {"data": "d1", "train": {"max_steps": 4}}, say=said.append)
    make(old, 4)
    (tmp_path / "k3" / "step-0000002").mkdir()  # the pre-fingerprint layout: checkpoints in the run folder
    assert json.loads((old / IDENT).read_text())["data"] == "d1"
    said.clear()
    new = workdir_for(tmp_path / "k3", "bbbb", {"data": "d2", "train": {"max_steps": 8}}, say=said.append)
    assert new == tmp_path / "k3" / "bbbb" and sorted(x.name for x in (tmp_path / "k3").iterdir()) == ["bbbb"]
    assert "changed: data, train.max_steps" in said[0] and "starting fresh" in said[1]
    assert find_resume(new, "bbbb", {}) is None
    make(new, 2, fp="bbbb")
    said.clear()
    assert workdir_for(tmp_path / "k3", "bbbb", {"data": "d2"}, say=said.append) == new
    assert said == [] and find_resume(new, "bbbb", {}) == ("step-0000002", 2)  # its own folder resumes
