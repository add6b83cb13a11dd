"""Your own data, row by row: what a labels CSV or class folders written by hand may hold (empty cells, blank
lines, one file under two spellings, paths leaving the folder, symbolic links, hidden files, bad bytes) is used or
reported with a reason that says what it is, and a row's number is the one a spreadsheet shows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from fer_utils import data, folders


def csv_dataset(root: Path, extra: list[str], header: str = "image,emotion,person", newline: str = "\n") -> Path:
    """A tiny CSV dataset (24 faces, 6 people, images/…png) with ``extra`` lines appended as written."""
    info = data.write_synthetic_dataset(root, "csv", n_images=24, size=16, n_people=6, workers=2)
    lines = [header] + [f"{f},{e},{p}" if "person" in header else f"{f},{e}" for f, e, p in
                        zip(info["files"], [data.EMOTIONS[i % 8] for i in range(24)],
                            [f"person{(i // 8) % 6:05d}" for i in range(24)])]
    info["csv"].write_text(newline.join(lines + extra) + newline, encoding="utf-8")
    return info["csv"]


def findings_of(audit: data.Audit, kind: str) -> list[tuple]:
    rows = audit.findings[audit.findings.kind == kind]
    return [(r.image, None if pd.isna(r.row) else int(r.row), r.detail) for r in rows.itertuples()]


def test_rows_without_a_person_are_reported_not_silently_their_own_person(tmp_path):
    csv = csv_dataset(tmp_path / "d", [])
    csv.write_text(csv.read_text().replace(",person00002\n", ",\n"))
    audit = data.audit_dataset(csv)
    nobody = findings_of(audit, "no person")
    assert [row for _, row, _ in nobody] == [18, 19, 20, 21, 22, 23, 24, 25]  # person00002's rows, now empty
    assert all("(8 such rows): split as a single image, so the person-disjoint split does not cover it" in d
               for _, _, d in nobody)
    assert audit.split_by == "person" and "no person" in set(audit.summary().kind)
    folders.prepare(data.open_dataset(csv), tmp_path / "w", seed=0, audit=audit)  # prepare.json says so too
    record = json.loads((tmp_path / "w" / "prepare.json").read_text())
    used_alone = int(folders.load_manifest(tmp_path / "w").query("split != 'excluded'").group.str.startswith("image:")
                     .sum())
    assert record["faces_without_person"] == used_alone > 0
    assert f"{used_alone} faces with no person named are each split as a single image" in record["split_method"]
    # no person column at all: a split by image, said once by split_by, not row by row
    plain = csv_dataset(tmp_path / "e", [], header="image,emotion")
    audit = data.audit_dataset(plain)
    assert audit.split_by == "image" and not findings_of(audit, "no person")


def test_an_empty_emotion_cell_is_a_row_without_label_not_an_unknown_label(tmp_path):
    csv = csv_dataset(tmp_path / "d", ["images/person00000_000000.png,,person00000"])
    audit = data.audit_dataset(csv)  # the run goes on
    assert findings_of(audit, "no label") == [("images/person00000_000000.png", 26, "no label (empty emotion cell)")]
    assert not findings_of(audit, "unknown label")
    assert findings_of(audit, "no person") == []  # nor is an empty cell elsewhere taken for one
    # an unknown label still stops the run, naming its rows
    csv.write_text(csv.read_text() + "images/person00001_000001.png,joy,person00001\n"
                   + "".join(f"images/person00001_000001.png,meh,person0000{i}\n" for i in range(5)))
    with pytest.raises(data.DatasetError, match=r"'meh' \(5; rows 28, 29, 30…\), 'joy' \(1; row 27\)"):
        data.audit_dataset(csv)


def test_a_row_without_label_is_excluded_in_the_manifest(tmp_path):
    csv = csv_dataset(tmp_path / "d", ["images/person00000_000000.png,,person00000"])
    manifest = folders.build_manifest(data.audit_dataset(csv)).set_index("row")
    assert (manifest.at[26, "split"], manifest.at[26, "reason"]) == ("excluded", "no label (empty emotion cell)")


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_row_numbers_count_blank_lines_as_a_spreadsheet_does(tmp_path, newline):
    csv = csv_dataset(tmp_path / "d", ["", "images/missing.png,happy,person00000", "", "",
                                       "images/gone.png,sad,person00001"], newline=newline)
    csv.write_bytes(b"\xef\xbb\xbf" + csv.read_bytes())  # a spreadsheet's "CSV UTF-8" starts with a BOM
    audit = data.audit_dataset(csv)
    assert [(image, row) for image, row, _ in findings_of(audit, "missing file")] == [
        ("images/missing.png", 27), ("images/gone.png", 30)]
    lines = csv.read_text(encoding="utf-8-sig").splitlines()
    assert lines[27 - 1].startswith("images/missing.png") and lines[30 - 1].startswith("images/gone.png")
    legend = data.load_legend(csv)
    assert legend.row.tolist() == [*range(2, 26), 27, 30]


def test_one_file_under_several_spellings_is_used_once(tmp_path):
    root = tmp_path / "d"
    name = "images/person00000_000000.png"  # row 2: anger, person00000
    csv = csv_dataset(root, [f"{root / name},anger,person00000", f"./{name},anger,person00000",
                             "images//person00000_000000.png,Angry,person00000", f"{name},anger,someone"])
    audit = data.audit_dataset(csv)
    assert not findings_of(audit, "exact duplicate row")  # none of them is exactly row 2
    assert findings_of(audit, "repeated image") == [
        (name, 26, f"also CSV row 2: the same file and emotion (written {name!r} there)"),
        (name, 27, f"also CSV row 2: the same file and emotion (written {name!r} there)"),
        (name, 28, f"also CSV row 2: the same file and emotion (written {name!r} there; label 'anger' there)"),
        (name, 29, "also CSV row 2: the same file and emotion (person 'person00000' there)")]
    assert not findings_of(audit, "same content") and not findings_of(audit, "unlisted file")
    assert audit.files.file.tolist().count(name) == 1
    manifest = folders.split_by_person(folders.build_manifest(audit))
    used = manifest[manifest.split.isin(folders.SPLITS)]
    assert used.image.is_unique and (used.image == name).sum() == 1
    assert set(manifest.loc[manifest.row.isin([26, 27, 28, 29]), "reason"]) == {
        "image already listed with the same label"}
    # an exact duplicate is still one, and the same file with another emotion still a conflict
    csv.write_text(csv.read_text() + f"{name},anger,person00000\n./{name},happy,person00000\n")
    audit = data.audit_dataset(csv)
    assert findings_of(audit, "exact duplicate row") == [(name, 30, "same as row 2")]
    assert {row for image, row, _ in findings_of(audit, "conflicting labels")} == {2, 26, 27, 28, 29, 31}


def test_paths_out_of_the_folder_empty_cells_and_linked_folders_say_what_they_are(tmp_path):
    root = tmp_path / "d"
    (tmp_path / "outside.png").write_bytes(b"")
    csv = csv_dataset(root, ["../outside.png,happy,person00000", ",happy,person00001", "../nowhere.png,sad,person00002",
                             f"{tmp_path / 'outside.png'},sad,person00003"])
    audit = data.audit_dataset(csv)
    assert findings_of(audit, "missing file") == [
        ("../outside.png", 26, f"a file outside the dataset folder {root}: not used (a labels CSV's images lie in "
                               "its folder or below)"),
        ("", 27, "no image path (empty cell)"),
        ("../nowhere.png", 28, f"not found, and outside the dataset folder {root}: not used (a labels CSV's images "
                               "lie in its folder or below)"),
        (str(tmp_path / "outside.png"), 29, f"a file outside the dataset folder {root}: not used (a labels CSV's "
                                             "images lie in its folder or below)")]
    reasons = folders.build_manifest(audit).set_index("row").reason  # the manifest gives each row the same reason
    assert [reasons[row] for row in (26, 27, 28, 29)] == [detail for _, _, detail in findings_of(audit, "missing file")]
    # a folder of the dataset that is a symbolic link to one elsewhere is followed, as a class folder is
    (root / "images").rename(tmp_path / "elsewhere")
    (root / "images").symlink_to(tmp_path / "elsewhere")
    audit = data.audit_dataset(csv)
    assert len(findings_of(audit, "missing file")) == 4 and not findings_of(audit, "unlisted file")
    assert len(audit.files) == 24 and audit.files.readable.all()


def test_small_wordings_and_hidden_files(tmp_path):
    root = tmp_path / "f"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    happy = sorted((root / "happiness").iterdir())
    os.rename(happy[0], root / "happiness" / "noextension")
    (root / "happiness" / ".hidden.png").write_bytes(happy[1].read_bytes())
    (root / "sadness" / ".cache").mkdir()
    (root / "sadness" / ".cache" / "thumb.png").write_bytes(happy[1].read_bytes())
    audit = data.audit_dataset(root)
    assert findings_of(audit, "format mismatch") == [("happiness/noextension", None,
                                                      "PNG content in a file without an extension")]
    assert findings_of(audit, "hidden file") == [
        (name, None, "hidden file (its name, or a folder's, starts with '.'): skipped")
        for name in ("happiness/.hidden.png", "sadness/.cache/thumb.png")]
    assert not findings_of(audit, "missing file")  # a file in a hidden folder is neither a row nor missing
    # a CSV that is not UTF-8: the line and the byte of the file where it stops being so
    csv = csv_dataset(tmp_path / "d", [])
    raw = csv.read_bytes().splitlines(keepends=True)
    raw[3] = raw[3].replace(b"person", b"pers\xe9n")  # Latin-1, not UTF-8
    csv.write_bytes(b"".join(raw))
    at = sum(map(len, raw[:3])) + raw[3].index(b"\xe9") + 1
    with pytest.raises(data.DatasetError, match=rf"invalid continuation byte at line 4 \(byte {at} of the file\)"):
        data.audit_dataset(csv)


def test_class_folders_follow_linked_sub_folders_and_say_what_they_cannot_read(tmp_path, unlistable):
    """A sub-folder of a class folder that is a symbolic link is followed (as a CSV's folders are), a link back
    up is walked once, a link that leads nowhere is an unreadable file, and a folder that cannot be listed is a
    finding of its own: every file is used or reported."""
    root, elsewhere = tmp_path / "f", tmp_path / "elsewhere"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    data.write_synthetic_dataset(elsewhere, "folders", n_images=4, size=16, emotions=["neutral"], seed=9, workers=2)
    (root / "neutral" / "more").symlink_to(elsewhere / "neutral")
    (root / "neutral" / "loop").symlink_to(root / "neutral")
    (root / "anger" / "broken.png").symlink_to(tmp_path / "not_there.png")
    legend = data.load_legend(root)
    linked = sorted(legend.image[legend.image.str.startswith("neutral/more/")])
    assert len(linked) == 4 and set(legend.label[legend.image.isin(linked)]) == {"neutral"}
    assert not legend.image.str.startswith("neutral/loop/").any()  # the same folder: walked once
    audit = data.audit_dataset(root)
    assert [i for i, _, _ in findings_of(audit, "unreadable file")] == ["anger/broken.png"]
    unlistable(root / "fear" / "locked")  # a folder that cannot be listed
    assert findings_of(data.audit_dataset(root), "unreadable folder") == [
        ("fear/locked", None, "a folder that cannot be listed (Permission denied): its images are not used")]


def test_data_that_cannot_train_a_model_is_refused_saying_why(tmp_path):
    """Notebook 02 stops at its manifest, before any split or copy, with what is wrong and why the rest went."""
    root = tmp_path / "one"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    for folder in root.iterdir():
        if folder.name != "happiness":
            for f in folder.iterdir():
                f.write_text("not an image")
    with pytest.raises(data.DatasetError, match=r"all of one emotion, happiness: a classifier needs at least 2\. "
                       r"Of its 16 rows and files, excluded: file unreadable \(corrupt or not an image\) 14"):
        folders.build_manifest(data.audit_dataset(root))
    (root / "happiness").rename(root / "skipped")
    with pytest.raises(data.DatasetError, match="no image is usable"):
        folders.build_manifest(data.audit_dataset(root, label_map={"skipped": None}))
    two = csv_dataset(tmp_path / "two", [])
    lines = two.read_text().splitlines()
    two.write_text("\n".join(lines[:2] + lines[10:11]) + "\n")  # anger of person00000, contempt of person00001
    with pytest.raises(data.DatasetError, match="show only 2 people: a train/val/test split that keeps each"):
        folders.build_manifest(data.audit_dataset(two))
    manifest = folders.build_manifest(data.audit_dataset(two), check=False)  # the rows and files, for a look
    assert len(manifest) == 24 and (manifest.split == "").sum() == 2


def test_class_folders_with_no_file_but_hidden_ones_are_named(tmp_path):
    root = tmp_path / "d"
    for name in ("happy", "sad", "angry"):
        (root / name).mkdir(parents=True)
    (root / "happy" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    with pytest.raises(data.DatasetError, match=r"The folders in .* \(angry, happy, sad\) hold no files \(hidden"):
        data.open_dataset(root)
    assert data.contributor_table(pd.DataFrame(columns=["user_id", "emotion"])).columns.tolist() == ["total"]


def test_a_link_up_to_a_folder_that_holds_the_class_is_not_followed(tmp_path):
    root = tmp_path / "f"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    (root / "sadness" / "up").symlink_to("..")
    audit = data.audit_dataset(root)
    assert findings_of(audit, "unreadable folder") == [("sadness/up", None, "not followed: a link to a folder that "
                                                        "holds it (it would read the other classes' images under "
                                                        "this class)")]
    assert not findings_of(audit, "conflicting labels") and len(audit.legend) == 16


def test_each_image_format_is_at_home_in_its_own_endings(tmp_path):
    """A TIFF named .tif, a PGM named .pgm or a camera's multi-picture JPEG named .jpg is no format mismatch."""
    from PIL import Image

    root = tmp_path / "f"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    face = Image.open(next((root / "anger").iterdir())).convert("L")
    face.save(root / "anger" / "scan.tif")
    face.save(root / "anger" / "scan.TIFF", format="TIFF")
    face.save(root / "anger" / "gray.pgm")
    face.convert("RGB").save(root / "anger" / "camera.jpg", format="MPO", save_all=True,
                             append_images=[face.convert("RGB")])
    face.save(root / "anger" / "webp.jpg", format="WEBP")
    audit = data.audit_dataset(root)
    assert audit.files.set_index("file").loc["anger/camera.jpg", "format"] == "MPO"
    assert findings_of(audit, "format mismatch") == [("anger/webp.jpg", None, "WEBP content in a .jpg file")]


def muxspace_dataset(root: Path) -> Path:
    """A tiny dataset in the upstream layout: images/<Person>_<n>.jpg and data/legend.csv (16 rows)."""
    import numpy as np

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "data").mkdir()
    rows = ["user.id,image,emotion"]
    for n in range(16):
        name = f"Person_{n % 4}_{n:04d}.jpg"
        data.draw_face(data.EMOTIONS[n % 8], rng, 16).save(root / "images" / name)
        rows.append(f"lab,{name},{data.EMOTIONS[n % 8]}")
    (root / "data" / "legend.csv").write_text("\n".join(rows) + "\n")
    return root


def test_a_muxspace_images_folder_says_what_it_does_not_read(tmp_path):
    root = muxspace_dataset(tmp_path / "m")
    assert not {"in a sub-folder", "hidden file"} & set(data.audit_dataset(root).summary().kind)  # only when found
    some = next((root / "images").iterdir())
    (root / "images" / "sub").mkdir()
    (root / "images" / "sub" / "nested.jpg").write_bytes(some.read_bytes())
    (root / "images" / ".DS_Store").write_bytes(b"\0")
    with open(root / "data" / "legend.csv", "a") as legend:
        legend.write("lab,sub/nested.jpg,sadness\n")
    audit = data.audit_dataset(root)
    assert findings_of(audit, "in a sub-folder") == [("sub/nested.jpg", None, data.MUXSPACE_SKIPPED_KINDS[
        "in a sub-folder"])]
    assert findings_of(audit, "hidden file") == [(".DS_Store", None, data.MUXSPACE_SKIPPED_KINDS["hidden file"])]
    assert findings_of(audit, "missing file") == [("sub/nested.jpg", 18, "in a sub-folder of images/: the legend "
                                                   "names files directly in images/")]
    assert {"in a sub-folder", "hidden file"} <= set(audit.summary().kind)
    (root / "images" / "Gone_0001.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a link that leads nowhere: said
    assert [(image, row) for image, row, _ in findings_of(data.audit_dataset(root), "unreadable file")] == [
        ("Gone_0001.jpg", None)]


def test_names_in_either_unicode_form_are_the_same_name(tmp_path):
    """macOS writes "ü" as "u" and an accent (NFD); a label_map or a CSV typed elsewhere has one character (NFC)."""
    import unicodedata

    root = tmp_path / "f"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    (root / "happiness").rename(root / unicodedata.normalize("NFD", "glücklich"))
    audit = data.audit_dataset(root, label_map={unicodedata.normalize("NFC", "Glücklich"): "happiness"})
    assert audit.legend.emotion.notna().all() and "happiness" not in audit.emotions_absent()
    csv = csv_dataset(tmp_path / "d", [])
    first = csv.read_text().splitlines()[1].split(",")[0]
    nfd = Path(first).with_name(unicodedata.normalize("NFD", "Gesicht_é.png")).as_posix()
    (csv.parent / first).rename(csv.parent / nfd)
    csv.write_text(csv.read_text().replace(first + ",", unicodedata.normalize("NFC", nfd) + ","))
    audit = data.audit_dataset(csv)
    assert not findings_of(audit, "missing file") and not findings_of(audit, "unlisted file")
    assert nfd in set(audit.legend.image)


def test_an_empty_file_is_said_to_be_empty(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert data.inspect_image(tmp_path / "empty.jpg")["error"] == "an empty file (0 bytes)"


def test_a_muxspace_legend_saved_by_a_spreadsheet_says_how_to_save_it(tmp_path):
    root = muxspace_dataset(tmp_path / "m")
    legend = root / "data" / "legend.csv"
    text = legend.read_text()
    legend.write_text(text.replace(",", ";"))
    with pytest.raises(data.DatasetError, match="legend.csv separates its columns with semicolons"):
        data.load_legend(root)
    legend.write_bytes(text.replace("sadness", "tristesse é").encode("latin-1"))
    with pytest.raises(data.DatasetError, match=r"legend.csv is not UTF-8 text \(invalid continuation byte at line "
                       r"8 .* save it as UTF-8"):
        data.load_legend(root)


def test_a_label_left_out_is_left_out_in_either_unicode_form(tmp_path):
    import unicodedata

    root = tmp_path / "f"
    data.write_synthetic_dataset(root, "folders", n_images=16, size=16, workers=2)
    (root / "happiness").rename(root / unicodedata.normalize("NFD", "glücklich"))
    audit = data.audit_dataset(root, label_map={"glücklich": None})
    assert len(findings_of(audit, "left out by label_map")) == 2 and not findings_of(audit, "unknown label")


def test_a_labels_csv_without_a_header_is_told_to_add_one(tmp_path):
    csv = csv_dataset(tmp_path / "d", [])
    csv.write_text("\n".join(csv.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(data.DatasetError, match=r"labels.csv has no header: its first line, 'images/person00000_"
                       r"000000.png,anger,person00000', is a row. Add a first line naming the columns, image,emotion"):
        data.load_legend(csv)


def test_labels_kept_in_a_table_that_is_no_csv_are_pointed_at(tmp_path):
    """Images in one folder and their labels in a text file: no folder is an emotion, so the error says how the
    labels can be read (a CSV), besides the label_map it suggests."""
    root = tmp_path / "d"
    data.write_synthetic_dataset(root, "folders", n_images=8, size=16, workers=2)
    (root / "img").mkdir()
    for folder in [f for f in root.iterdir() if f.name != "img"]:
        for f in folder.iterdir():
            f.rename(root / "img" / f.name)
        folder.rmdir()
    (root / "mylabels.txt").write_text("img/a.png happy\n")
    with pytest.raises(data.DatasetError, match=r"'img' \(8\) .* If the labels are in mylabels.txt: a labels table is "
                       r"read only as a CSV of image,emotion\[,person\]"):
        data.audit_dataset(root)
    (root / "happy").mkdir()  # one folder is an emotion: the class folders are meant, and the hint is not given
    (root / "img" / sorted(p.name for p in (root / "img").iterdir())[0]).rename(root / "happy" / "x.png")
    with pytest.raises(data.DatasetError) as err:
        data.audit_dataset(root)
    assert "mylabels.txt" not in str(err.value)
