"""Shared fixtures: a tiny synthetic dataset in the upstream layout, with the faults real data has."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from fer_utils import EMOTIONS

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = Path(os.environ.get("FER_DATA_DIR") or REPO.parent / "shared" / "facial_expressions")

# People: LFW-style names (several images each) and IMFDB-style names; 8 emotions.
PEOPLE = ["Ada_Lovelace", "Alan_Turing", "Grace_Hopper", "Katherine_Johnson", "Edsger_Dijkstra",
          "Barbara_Liskov", "Donald_Knuth", "Margaret_Hamilton", "John_McCarthy", "Radia_Perlman",
          "Claude_Shannon", "Frances_Allen"]
IMFDB_PEOPLE = ["HrithikRoshan", "KatrinaKaif", "Dileep"]


def draw_face(emotion: str, rng: np.random.Generator, size: int = 64, mode: str = "L") -> Image.Image:
    """A cartoon face whose mouth and brows depend on the emotion, with noise: learnable, not trivial."""
    k = EMOTIONS.index(emotion)
    im = Image.new("L", (size, size), int(rng.integers(90, 140)))
    d = ImageDraw.Draw(im)
    s = size / 64
    d.ellipse([8 * s, 6 * s, 56 * s, 60 * s], fill=int(rng.integers(170, 210)))
    for x in (22, 42):  # eyes
        d.ellipse([(x - 4) * s, 24 * s, (x + 4) * s, 30 * s], fill=40)
    brow = (k % 4 - 1.5) * 2  # brow tilt by emotion
    d.line([14 * s, (20 - brow) * s, 28 * s, (20 + brow) * s], fill=30, width=max(1, int(2 * s)))
    d.line([36 * s, (20 + brow) * s, 50 * s, (20 - brow) * s], fill=30, width=max(1, int(2 * s)))
    curve = (k // 2) * 3  # mouth shape by emotion: smile vs frown, open vs closed
    top, bottom = 40 - curve / 2, 44 + curve / 2 + 3 * (k % 2)
    d.chord([20 * s, top * s, 44 * s, bottom * s], 0 if k % 3 else 180, 180 if k % 3 else 360, fill=60)
    arr = np.asarray(im, dtype=np.float32) + rng.normal(0, 8, (size, size))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return im.convert(mode)


def make_synthetic_dataset(root: Path, per_person: int = 6, seed: int = 0) -> dict:
    """Write a dataset in the upstream layout (images/, data/legend.csv, test/) with known faults.

    Returns what was planted, so tests can check the audit finds each fault.
    """
    rng = np.random.default_rng(seed)
    images, data, test = root / "images", root / "data", root / "test"
    for d in (images, data, test):
        d.mkdir(parents=True, exist_ok=True)
    rows = [("user.id", "image", "emotion")]
    for p, person in enumerate(PEOPLE):
        for n in range(1, per_person + 1):
            emotion = EMOTIONS[(p + n) % len(EMOTIONS)]
            name = f"{person}_{n:04d}.jpg"
            draw_face(emotion, rng, 64).save(images / name, "JPEG", quality=90)
            label = emotion.upper() if n == 2 else (f" {emotion} " if n == 3 else emotion)  # messy case/space
            rows.append(("lab1", name, label))
    for person in IMFDB_PEOPLE:
        for n in range(1, 4):
            emotion = EMOTIONS[(n + len(person)) % len(EMOTIONS)]
            name = f"{person}_{n}.jpg"
            draw_face(emotion, rng, 40, "RGB").save(images / name, "JPEG", quality=90)
            rows.append(("lab2", name, emotion))
    planted = {}
    # A WebP file named .jpg (upstream has one).
    draw_face("happiness", rng).save(images / "Webp_Person_0001.jpg", "WEBP")
    rows.append(("lab2", "Webp_Person_0001.jpg", "happiness"))
    planted["format mismatch"] = ["Webp_Person_0001.jpg"]
    # A truncated JPEG and a text file named .jpg.
    good = images / "Ada_Lovelace_0001.jpg"
    (images / "Broken_Face_0001.jpg").write_bytes(good.read_bytes()[:300])
    (images / "Not_Animage_0001.jpg").write_text("this is not an image\n")
    rows += [("lab3", "Broken_Face_0001.jpg", "neutral"), ("lab3", "Not_Animage_0001.jpg", "sadness")]
    planted["unreadable file"] = ["Broken_Face_0001.jpg", "Not_Animage_0001.jpg"]
    # Legend rows naming files that do not exist; files no row names.
    rows.append(("lab3", "Ghost_Person_0001.jpg", "anger"))
    planted["missing file"] = ["Ghost_Person_0001.jpg"]
    draw_face("neutral", rng).save(images / "Nobody_Listed_0001.jpg", "JPEG")
    planted["unlisted file"] = ["Nobody_Listed_0001.jpg"]
    # Exact duplicate row, repeated image (other contributor, same label), conflicting labels, unknown label.
    rows.append(rows[5])
    planted["exact duplicate row"] = [rows[5][1]]
    rows.append(("lab9", rows[8][1], rows[8][2]))
    planted["repeated image"] = [rows[8][1]]
    rows.append(("lab9", rows[10][1], "surprise" if "surprise" not in rows[10][2].lower() else "anger"))
    planted["conflicting labels"] = [rows[10][1]]
    draw_face("anger", rng).save(images / "Odd_Label_0001.jpg", "JPEG")
    rows.append(("lab3", "Odd_Label_0001.jpg", "confused"))
    planted["unknown label"] = ["Odd_Label_0001.jpg"]
    # A non-LFW name (its own group) and a byte-identical copy under another person's name.
    draw_face("surprise", rng).save(images / "facial-expressions_123k.jpg", "JPEG")
    rows.append(("lab4", "facial-expressions_123k.jpg", "surprise"))
    (images / "Copy_Cat_0001.jpg").write_bytes((images / "Alan_Turing_0001.jpg").read_bytes())
    rows.append(("lab4", "Copy_Cat_0001.jpg", rows[1 + per_person][2].strip().lower()))
    planted["same content"] = ["Alan_Turing_0001.jpg", "Copy_Cat_0001.jpg"]
    (data / "legend.csv").write_text("\n".join(",".join(r) for r in rows) + "\n")
    for n in range(3):
        draw_face(EMOTIONS[n], rng, 80).save(test / f"{n}a.jpg", "JPEG")
    (root / "README.md").write_text("synthetic facial_expressions for tests\n")
    return {"legend_rows": len(rows) - 1, "planted": planted}


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory) -> tuple[Path, dict]:
    """(root, planted faults) of a synthetic dataset, made once per test session; treat as read-only."""
    root = tmp_path_factory.mktemp("synthetic") / "facial_expressions"
    planted = make_synthetic_dataset(root)
    return root, planted


@pytest.fixture(scope="session")
def synthetic_data_dir(synthetic_dataset) -> Path:
    return synthetic_dataset[0]


@pytest.fixture(scope="session")
def prepared_work_dir(synthetic_data_dir, tmp_path_factory) -> Path:
    """A work folder prepared by ``folders.prepare`` from the synthetic dataset (read-only for tests)."""
    from fer_utils import data, folders

    work = tmp_path_factory.mktemp("work")
    folders.prepare(data.get_dataset(synthetic_data_dir), work, seed=42, test_size=0.25, val_size=0.25)
    return work


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    if not (REAL_DATA / "data" / "legend.csv").exists():
        pytest.skip(f"real dataset not found (set FER_DATA_DIR; looked in {REAL_DATA})")
    return REAL_DATA


#: Tiny settings for running the whole chain on the synthetic dataset (only those a notebook declares are used).
TINY = {"epochs": 1, "head_epochs": 1, "batch_size": 16, "n_gradcam": 2, "samples_per_emotion": 2}


@pytest.fixture(scope="session")
def synthetic_chain(synthetic_data_dir, tmp_path_factory) -> Path:
    """A work folder in which ``python -m fer_utils run`` executed every notebook on the synthetic data."""
    from fer_utils import runner

    work = tmp_path_factory.mktemp("chain")
    declared = {name for nb in runner.numbered_notebooks() for name in runner.declared_parameters(nb)}
    params = [arg for name, value in TINY.items() if name in declared for arg in ("-p", name, str(value))]
    old = os.environ.get("FER_DATA_DIR")
    try:
        rc = runner.main(["--data-dir", str(synthetic_data_dir), "--work-dir", str(work), *params])
    finally:
        if old is None:
            os.environ.pop("FER_DATA_DIR", None)
        else:
            os.environ["FER_DATA_DIR"] = old
        os.environ.pop("FER_WORK_DIR", None)
    assert rc == 0, f"the chain failed on synthetic data; see {work}/executed"
    return work
