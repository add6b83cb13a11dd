"""Face detectors compared on photos with known faces: recall, false positives, time per photo, predict latency.

    python benchmarks/detectors.py --data-dir DIR [--faces 150] [--no-faces 60] [--seed 0] [--work-dir W]

Builds, deterministically from ``--seed``, a set of photos whose faces are known:

- ``--faces`` composites of 640×480: 1–4 of the dataset's 350×350 LFW face crops (``DIR/images``), scaled to
  80–250 px, rotated by −15…15°, pasted at known, non-overlapping positions on a background (flat,
  gradient, noise, stripes, or a mosaic of the crops' corners — hair, collars, background, no whole
  face). The true box of a face is its pasted crop before rotation (a square around the same centre);
- ``--no-faces`` photos of 640×480 with no face: noise, gradients, stripes, corner mosaics;

plus the dataset's unlabelled ``test/`` photos (tight face crops; no boxes known: the number of photos with
a detection, with more than one, and the boxes on ``test/64a.jpg``, where the cascade boxes a cheek).

Each detector (``fer_utils.prediction.detect_faces``, defaults: ``min_face`` 0.1) is scored: recall at IoU
≥ 0.3 and ≥ 0.5 (a detector's box frames a face differently from the crop it was pasted as), false
positives per photo (on face photos: boxes matching no face; on no-face photos: any box), warm time per
photo on the already-read image (median, p90; detectors interleaved photo by photo, so both see the same
load), and the end-to-end ``predict`` latency of one 600×512 photo with one face (the Grace Hopper
portrait matplotlib ships; ``<work_dir>/model.keras`` if there is one, else an untrained ``seed_cnn``,
for timing only). Extra rows show other operating points (the cascade's ``min_neighbors``, MTCNN's
``min_confidence``: filtered from one run, so untimed).

``--browser`` adds face-api.js's Tiny Face Detector (``@vladmandic/face-api``, the live page's detector, with its
options: inputSize 416, score ≥ 0.5; no ``min_face`` filter) run in headless Chromium through Playwright
(``benchmarks/faceapi.py``) on the same photos (rebuilt from the same ``--seed``, written as PNG and decoded
by the browser), scored by the same code, timed in the page around ``detectAllFaces`` on the decoded canvas;
``--tfjs-backend wasm`` runs it on tfjs's WebAssembly backend instead of the live page's WebGL (in software
without a GPU). Its row (and an untimed one with ``min_face`` 0.1 applied) is merged into the existing
``detectors.json`` / ``detectors.md`` without re-running Haar and MTCNN (the parameters must match).

Writes ``benchmarks/results/detectors.json`` (machine, load average, parameters, figures) and
``detectors.md`` (the table), and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import _checks
import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SIZE = (640, 480)
FACE_PX = (80, 250)
MAX_ANGLE = 15.0
BACKGROUNDS = ("flat", "gradient", "noise", "stripes", "mosaic")
NO_FACE_KINDS = ("noise", "gradient", "stripes", "mosaic")
HAAR_NEIGHBORS = (3, 5, 8)  # 5: the default
MTCNN_CONFIDENCES = (0.8, 0.9, 0.95)  # 0.9: the default
CORNER = 90  # px of a 350×350 crop's corner used in mosaics (outside the face's box)


# --------------------------------------------------------------------------------------------------
# The photos
# --------------------------------------------------------------------------------------------------


def lfw_faces(data_dir: Path, count: int, rng: np.random.Generator) -> list[Image.Image]:
    """``count`` distinct 350×350 LFW crops (grayscale) from ``data_dir/images``, chosen by ``rng``."""
    files = sorted((data_dir / "images").glob("*.jpg"))
    out = []
    for i in rng.permutation(len(files)):
        try:
            with Image.open(files[i]) as im:
                if im.size == (350, 350):
                    out.append(im.convert("L"))
        except OSError:
            continue
        if len(out) == count:
            break
    return out


def background(kind: str, rng: np.random.Generator, corners: list[Image.Image]) -> Image.Image:
    w, h = SIZE
    if kind == "flat":
        arr = np.broadcast_to(rng.integers(40, 220, 3), (h, w, 3)) + rng.normal(0, 3, (h, w, 3))
    elif kind == "gradient":
        a, b = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        theta = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w]
        t = xx * np.cos(theta) + yy * np.sin(theta)
        t = ((t - t.min()) / (t.max() - t.min()))[..., None]
        arr = a * (1 - t) + b * t
    elif kind == "noise":
        arr = rng.normal(rng.uniform(60, 190), rng.uniform(20, 60), (h, w, 3))
        blurred = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(
            ImageFilter.GaussianBlur(rng.uniform(0, 4)))
        return blurred
    elif kind == "stripes":
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.zeros((h, w))
        for _ in range(2):
            theta, period = rng.uniform(0, np.pi), rng.uniform(8, 80)
            arr += np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        arr = (128 + 50 * arr)[..., None] * rng.uniform(0.6, 1.0, 3) + rng.normal(0, 8, (h, w, 3))
    elif kind == "mosaic":
        canvas = Image.new("RGB", SIZE)
        tile = int(rng.integers(80, 161))
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                patch = corners[int(rng.integers(len(corners)))]
                canvas.paste(patch.resize((tile, tile), Image.BILINEAR).convert("RGB"), (x, y))
        return canvas
    else:
        raise ValueError(kind)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def corner_patches(faces: list[Image.Image], rng: np.random.Generator) -> list[Image.Image]:
    """One random corner (``CORNER`` px square) of each crop: hair, ears, collars, background — no whole face."""
    out = []
    for face in faces:
        cx, cy = rng.integers(0, 2, 2) * (350 - CORNER)
        out.append(face.crop((int(cx), int(cy), int(cx) + CORNER, int(cy) + CORNER)))
    return out


def place(sizes: list[int], rng: np.random.Generator, tries: int = 200) -> list[tuple[int, int]] | None:
    """Top-left corners for squares of ``sizes`` inside the canvas, not overlapping (10 px apart), or None."""
    w, h = SIZE
    placed: list[tuple[int, int, int]] = []
    for s in sizes:
        for _ in range(tries):
            x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
            if all(x + s + 10 <= px or px + ps + 10 <= x or y + s + 10 <= py or py + ps + 10 <= y
                   for px, py, ps in placed):
                placed.append((x, y, s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def face_photo(faces: list[Image.Image], corners, rng: np.random.Generator) -> tuple[Image.Image, list[dict]]:
    """A composite with ``len(faces)`` faces (fewer when they do not fit) and their true boxes."""
    canvas = background(BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))], rng, corners)
    while True:
        sizes = [int(rng.integers(FACE_PX[0], FACE_PX[1] + 1)) for _ in faces]
        spots = place(sizes, rng)
        if spots is not None:
            break
        faces = faces[:-1] if len(faces) > 1 else faces
    truth = []
    for face, size, (x, y) in zip(faces, sizes, spots):
        angle = float(rng.uniform(-MAX_ANGLE, MAX_ANGLE))
        scaled = face.resize((size, size), Image.LANCZOS).convert("RGB")
        mask = Image.new("L", scaled.size, 255)
        rotated = scaled.rotate(angle, resample=Image.BICUBIC, expand=True)
        mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
        cx, cy = x + size / 2, y + size / 2
        canvas.paste(rotated, (round(cx - rotated.width / 2), round(cy - rotated.height / 2)), mask)
        truth.append({"box": [x, y, size, size], "angle": round(angle, 2)})
    return canvas, truth


def build_set(data_dir: Path, n_faces: int, n_none: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 5, n_faces)
    pool = lfw_faces(data_dir, int(counts.sum()) + 100, rng)
    faces, corners = pool[: int(counts.sum())], corner_patches(pool[int(counts.sum()):], rng)
    photos, k = [], 0
    for i, c in enumerate(counts):
        image, truth = face_photo(faces[k: k + c], corners, rng)
        k += c
        photos.append({"name": f"faces_{i:03d}", "image": image, "truth": truth})
    for i in range(n_none):
        kind = NO_FACE_KINDS[i % len(NO_FACE_KINDS)]
        photos.append({"name": f"none_{kind}_{i:03d}", "image": background(kind, rng, corners), "truth": []})
    return photos


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    return inter / (aw * ah + bw * bh - inter) if inter else 0.0


def match(truth: list[list[int]], boxes: list[list[int]], threshold: float) -> tuple[int, int]:
    """(true faces found, boxes matching no face): greedy one-to-one matching, best IoU first."""
    pairs = sorted(((iou(t, b), i, j) for i, t in enumerate(truth) for j, b in enumerate(boxes)), reverse=True)
    used_t, used_b = set(), set()
    for v, i, j in pairs:
        if v < threshold:
            break
        if i not in used_t and j not in used_b:
            used_t.add(i)
            used_b.add(j)
    return len(used_t), len(boxes) - len(used_b)


def score(photos: list[dict], found: dict[str, list[list[int]]]) -> dict:
    face_photos = [p for p in photos if p["truth"]]
    none_photos = [p for p in photos if not p["truth"]]
    n_true = sum(len(p["truth"]) for p in face_photos)
    out = {}
    for thr in (0.3, 0.5):
        hits = sum(match([t["box"] for t in p["truth"]], found[p["name"]], thr)[0] for p in face_photos)
        out[f"recall_iou{int(thr * 10):02d}"] = hits / n_true
    out["fp_per_face_photo"] = sum(match([t["box"] for t in p["truth"]], found[p["name"]], 0.3)[1]
                                   for p in face_photos) / len(face_photos)
    out["fp_per_no_face_photo"] = sum(len(found[p["name"]]) for p in none_photos) / max(1, len(none_photos))
    out["no_face_photos_with_a_box"] = sum(bool(found[p["name"]]) for p in none_photos)
    by_angle = {}  # recall at IoU ≥ 0.3 by |rotation|
    for lo, hi in ((0, 5), (5, 10), (10, 15.01)):
        hit = tot = 0
        for p in face_photos:
            for t in p["truth"]:
                if lo <= abs(t["angle"]) < hi:
                    tot += 1
                    hit += match([t["box"]], found[p["name"]], 0.3)[0]
        by_angle[f"{lo}-{int(hi)}"] = hit / max(1, tot)
    out["recall_iou03_by_abs_angle"] = by_angle
    return out


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="dataset root (default $FER_DATA_DIR)")
    parser.add_argument("--faces", type=_checks.positive_int, default=150,
                        help="composite photos with faces (default 150)")
    parser.add_argument("--no-faces", type=_checks.non_negative_int, default=60,
                        help="photos without a face (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", help="for <work_dir>/model.keras (default $FER_WORK_DIR or work/)")
    parser.add_argument("--latency-runs", type=_checks.positive_int, default=40)
    _checks.add_out(parser, RESULTS, "folder for detectors.json and detectors.md")
    parser.add_argument("--save-photos", metavar="DIR", help="also write the generated photos (PNG) here")
    parser.add_argument("--browser", action="store_true", help="only add face-api.js's Tiny Face Detector (in "
                        "Chromium) to the existing detectors.json / .md, on the same photos")
    parser.add_argument("--tfjs-backend", choices=("auto", "wasm"), default="auto", help="with --browser: tfjs's "
                        "backend (auto: the live page's WebGL, else CPU; wasm: WebAssembly)")
    args = parser.parse_args(argv)
    _checks.out_folder(args.out, what="a folder for detectors.json and detectors.md")
    if args.browser and not (args.out / "detectors.json").is_file():
        _checks.refuse(f"--browser adds a row to {args.out / 'detectors.json'}, which does not exist: run "
                       "detectors.py without --browser first, or name the folder that holds it with --out")
    if args.save_photos:
        _checks.out_folder(args.save_photos, "--save-photos", "a folder for the photos")
    args.dataset = _checks.dataset(args.data_dir, download=False)
    for path, option in ((args.out, "--out"), (args.save_photos, "--save-photos")):
        if path:
            _checks.outside(path, args.dataset.root, option)
    if args.browser:
        return browser_main(args)

    from fer_utils import import_tensorflow, models, workfolder

    tf, keras = import_tensorflow()
    from fer_utils import prediction as P
    from fer_utils.prediction import detection as D

    data_dir = args.dataset.root
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    photos = build_set(data_dir, args.faces, args.no_faces, args.seed)
    build_s = time.perf_counter() - t0
    if args.save_photos:
        Path(args.save_photos).mkdir(parents=True, exist_ok=True)
        for p in photos:
            p["image"].save(Path(args.save_photos) / f"{p['name']}.png")
    n_true = sum(len(p["truth"]) for p in photos)
    print(f"{len(photos)} photos: {args.faces} with {n_true} faces, {args.no_faces} without (built in {build_s:.1f} s)")

    # cold start (first call: cascade / weights loaded, nets traced), then warm-up
    cold = {}
    for det in D.DETECTORS:
        t = time.perf_counter()
        P.detect_faces(photos[0]["image"], detector=det)
        cold[det] = (time.perf_counter() - t) * 1000
        for p in photos[1:4]:
            P.detect_faces(p["image"], detector=det)

    low = min(MTCNN_CONFIDENCES)
    found = {f"haar (min_neighbors {n})": {} for n in HAAR_NEIGHBORS}
    found |= {f"mtcnn (min_confidence {c})": {} for c in MTCNN_CONFIDENCES}
    times = {det: [] for det in D.DETECTORS}
    for i, p in enumerate(photos):
        order = D.DETECTORS if i % 2 == 0 else D.DETECTORS[::-1]
        for det in order:
            t = time.perf_counter()
            if det == "haar":
                boxes = P.detect_faces(p["image"], detector="haar")
            else:
                scored = P.detect_faces_scored(p["image"], detector="mtcnn", min_confidence=low)
            times[det].append(time.perf_counter() - t)
            if det == "haar":
                found["haar (min_neighbors 5)"][p["name"]] = boxes
            else:
                for c in MTCNN_CONFIDENCES:
                    found[f"mtcnn (min_confidence {c})"][p["name"]] = [b for b, s in scored if s >= c]
        for n in HAAR_NEIGHBORS:
            if n != 5:
                found[f"haar (min_neighbors {n})"][p["name"]] = P.detect_faces(p["image"], detector="haar",
                                                                              min_neighbors=n)
    rows = {name: score(photos, f) for name, f in found.items()}
    defaults = {"haar": "haar (min_neighbors 5)", "mtcnn": f"mtcnn (min_confidence {D.DEFAULT_MIN_CONFIDENCE})"}
    for det, name in defaults.items():
        rows[name] |= {"time_median_ms": pct(times[det], 50), "time_p90_ms": pct(times[det], 90),
                       "cold_first_call_ms": cold[det]}

    # the dataset's unlabelled test/ photos: tight crops, no known boxes
    test_files = P.collect_inputs([data_dir / "test"])
    test = {}
    for det in D.DETECTORS:
        n_any = n_multi = 0
        boxes_64a = None
        for f in test_files:
            boxes = P.detect_faces(P.read_image(f), detector=det)
            n_any += bool(boxes)
            n_multi += len(boxes) > 1
            if Path(f).name == "64a.jpg":
                boxes_64a = boxes
        test[det] = {"photos": len(test_files), "with_a_detection": n_any, "with_several": n_multi,
                     "boxes_64a": boxes_64a}
        rows[defaults[det]] |= {"test_photos_with_a_detection": n_any, "test_photos_with_several": n_multi}

    # end-to-end predict of one photo (read + detect + preprocess + model), interleaved
    import matplotlib.cbook

    hopper = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    model_path = workfolder.get_work_dir(args.work_dir, create=False) / workfolder.MODEL_FILE
    if model_path.is_file():
        fer, model_desc = P.load_model(model_path), workfolder.display_path(model_path)
    else:
        fer = P.as_loaded(models.build("seed_cnn", (64, 64, 1)))
        model_desc = "untrained seed_cnn 64×64 grayscale (timing only; no <work_dir>/model.keras)"
    latency = {det: [] for det in D.DETECTORS}
    statuses = {}
    for det in D.DETECTORS:
        for _ in range(5):
            res = P.predict(fer, hopper, detector=det)
        statuses[det] = {"status": res.status[0], "detection": res.detection[0], "box": list(res.box[0])}
    for i in range(args.latency_runs):
        for det in D.DETECTORS if i % 2 == 0 else D.DETECTORS[::-1]:
            t = time.perf_counter()
            P.predict(fer, hopper, detector=det)
            latency[det].append(time.perf_counter() - t)
    for det, name in defaults.items():
        rows[name] |= {"predict_one_photo_median_ms": pct(latency[det], 50),
                       "predict_one_photo_p90_ms": pct(latency[det], 90), "predict_hopper": statuses[det]}

    info = workfolder.machine_info()
    from importlib.metadata import version

    record = {
        "machine": info | {"load_average_before": [round(v, 2) for v in load_before],
                           "load_average_after": [round(v, 2) for v in os.getloadavg()],
                           "opencv": __import__("cv2").__version__, "mtcnn": version("mtcnn"),
                           "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default"},
        "parameters": {"seed": args.seed, "face_photos": args.faces, "no_face_photos": args.no_faces,
                       "true_faces": n_true, "photo_size": list(SIZE), "face_px": list(FACE_PX),
                       "max_angle_deg": MAX_ANGLE, "backgrounds": list(BACKGROUNDS),
                       "no_face_kinds": list(NO_FACE_KINDS), "min_face": D.DEFAULT_MIN_FACE,
                       "default_detector": D.DEFAULT_DETECTOR, "mtcnn_min_confidence": D.DEFAULT_MIN_CONFIDENCE,
                       "latency_photo": "grace_hopper.jpg (600×512, one face)", "latency_runs": args.latency_runs,
                       "model": model_desc,
                       "timing": "warm, per photo on the decoded image, detectors interleaved; MTCNN timed at "
                                 f"min_confidence {low} (the threshold only filters ONet's output)"},
        "detectors": rows,
        "test_folder": test,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detectors.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record)
    (out / "detectors.md").write_text(table)
    print(table)
    return 0


def browser_main(args) -> int:
    """``--browser``: face-api.js's Tiny Face Detector on the same photos, merged into the existing record."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import faceapi

    from fer_utils import workfolder
    from fer_utils.prediction import detection as D

    out = Path(args.out)
    record = json.loads((out / "detectors.json").read_text())
    p = record["parameters"]
    if (p["seed"], p["face_photos"], p["no_face_photos"]) != (args.seed, args.faces, args.no_faces):
        raise SystemExit(f"{out / 'detectors.json'} was measured with seed {p['seed']}, {p['face_photos']} and "
                         f"{p['no_face_photos']} photos: run with the same --seed / --faces / --no-faces")
    data_dir = args.dataset.root
    load_before = os.getloadavg()
    photos = build_set(data_dir, args.faces, args.no_faces, args.seed)
    assert sum(len(ph["truth"]) for ph in photos) == p["true_faces"]
    found, found_min, times = {}, {}, []
    with tempfile.TemporaryDirectory(prefix="fer-detectors-") as tmp:
        for ph in photos:
            ph["image"].save(Path(tmp) / f"{ph['name']}.png")
        with faceapi.face_api_page({"photos": Path(tmp)}, backend=args.tfjs_backend) as (page, base, backend):
            call = "([u, o]) => bench.detect(u, o)"
            t = time.perf_counter()
            first = page.evaluate(call, [f"{base}photos/{photos[0]['name']}.png", faceapi.TINY_OPTIONS])
            cold = (time.perf_counter() - t) * 1000
            for ph in photos[1:4]:
                page.evaluate(call, [f"{base}photos/{ph['name']}.png", faceapi.TINY_OPTIONS])
            for i, ph in enumerate(photos):
                r = page.evaluate(call, [f"{base}photos/{ph['name']}.png", faceapi.TINY_OPTIONS])
                times.append(r["ms"] / 1000)
                boxes = [[round(v) for v in f[:4]] for f in r["faces"]]
                found[ph["name"]] = boxes
                side = D.DEFAULT_MIN_FACE * min(ph["image"].size)
                found_min[ph["name"]] = [b for b in boxes if max(b[2], b[3]) >= side]
                if i % 50 == 0:
                    print(f"{i}/{len(photos)}: {r['ms']:.0f} ms", flush=True)
    row = score(photos, found) | {"time_median_ms": pct(times, 50), "time_p90_ms": pct(times, 90),
                                  "first_call_in_page_ms": first["ms"]}
    name = f"face-api tiny (Chromium, tfjs {backend})"
    record["detectors"][name] = row
    record["detectors"][f"{name}, min_face {D.DEFAULT_MIN_FACE}"] = score(photos, found_min)
    record.setdefault("browser", {})[name] = {"machine": workfolder.machine_info() | {
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()]}, **faceapi.versions(),
        "tfjs_backend": backend, "options": faceapi.TINY_OPTIONS, "cold_first_call_ms": cold,
        "timing": "warm, in the page (performance.now) around detectAllFaces on the decoded canvas; photos in order",
        "command": "python benchmarks/detectors.py --browser"
                   + (f" --tfjs-backend {args.tfjs_backend}" if args.tfjs_backend != "auto" else "")}
    (out / "detectors.json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record)
    (out / "detectors.md").write_text(table)
    print(table)
    return 0


def markdown(record: dict) -> str:
    m, p = record["machine"], record["parameters"]
    lines = [
        "# Face detectors: Haar cascade vs MTCNN",
        "",
        f"`python benchmarks/detectors.py --data-dir DIR` (seed {p['seed']}): {p['face_photos']} composites of "
        f"{p['photo_size'][0]}×{p['photo_size'][1]} with {p['true_faces']} of the dataset's LFW faces "
        f"({p['face_px'][0]}–{p['face_px'][1]} px, rotated ±{p['max_angle_deg']:g}°), {p['no_face_photos']} photos "
        f"without a face; min_face {p['min_face']}. Machine: {m['processor']}, {m['cpu_count']} cores, TF "
        f"{m.get('tensorflow')}, OpenCV {m['opencv']}, mtcnn {m['mtcnn']}; load average "
        f"{m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after (shared machine).",
        "",
        "| detector | recall IoU≥0.3 | recall IoU≥0.5 | FP / face photo | FP / no-face photo | no-face photos "
        "with a box | time / photo, median (p90) | predict 1 photo, median (p90) | test/ photos with a face |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in record["detectors"].items():
        timing = (f"{r['time_median_ms']:.1f} ({r['time_p90_ms']:.1f}) ms" if "time_median_ms" in r else "—")
        pred = (f"{r['predict_one_photo_median_ms']:.1f} ({r['predict_one_photo_p90_ms']:.1f}) ms"
                if "predict_one_photo_median_ms" in r else "—")
        test = (f"{r['test_photos_with_a_detection']} / {record['test_folder']['haar']['photos']}"
                if "test_photos_with_a_detection" in r else "—")
        lines.append(f"| {name} | {r['recall_iou03']:.3f} | {r['recall_iou05']:.3f} | {r['fp_per_face_photo']:.3f} | "
                     f"{r['fp_per_no_face_photo']:.3f} | {r['no_face_photos_with_a_box']} / {p['no_face_photos']} | "
                     f"{timing} | {pred} | {test} |")
    lines += ["", "Recall at IoU ≥ 0.3 by rotation (|angle|, degrees):", "",
              "| detector | " + " | ".join(next(iter(record["detectors"].values()))["recall_iou03_by_abs_angle"])
              + " |", "| --- |" + " ---: |" * 3]
    for name, r in record["detectors"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in r["recall_iou03_by_abs_angle"].values()) + " |")
    tests = record["test_folder"]
    lines += ["", f"The dataset's {tests['haar']['photos']} `test/` photos (tight face crops): photos with more than "
              "one box: " + ", ".join(f"{d} {t['with_several']}" for d, t in tests.items()) + "; boxes on "
              "`test/64a.jpg` (162×193; the cascade boxes a cheek): "
              + ", ".join(f"{d} {t['boxes_64a']}" for d, t in tests.items()) + ".",
              "First call (cascade loaded / weights loaded and nets traced): "
              + ", ".join(f"{n.split()[0]} {r['cold_first_call_ms']:.0f} ms" for n, r in record["detectors"].items()
                          if "cold_first_call_ms" in r) + ".",
              f"Predict latency: {p['latency_photo']}, {p['latency_runs']} runs each, model: {p['model']}.", ""]
    if record.get("browser"):
        lines[-1:] = ["face-api.js's Tiny Face Detector, the live page's (its options: inputSize 416, score ≥ 0.5, no "
                      f"min_face filter; the row below each applies min_face {p['min_face']} to the same boxes), in "
                      "headless Chromium on the same photos, scored by the same code; timed in the page around "
                      "`detectAllFaces` on the decoded canvas. Not run on the test/ photos nor through predict. "
                      "Measured on another machine than the Haar and MTCNN rows, so times compare only roughly:", ""]
        for name, b in record["browser"].items():
            bm = b["machine"]
            lines.append(f"- `{name}`: `{b['command']}`, {b['face_api']}, {b['chromium']}; {bm['processor']}, "
                         f"{bm['cpu_count']} cores, no GPU (WebGL runs in software), load average "
                         f"{bm['load_average_before'][0]:.1f} before, {bm['load_average_after'][0]:.1f} after "
                         f"(shared); first call {b.get('cold_first_call_ms', 0):.0f} ms.")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    _checks.stop_as_interrupt()  # kill, timeout: temporary folders are removed as on Ctrl-C
    sys.exit(main())
