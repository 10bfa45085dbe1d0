"""Cost of the weight-free detectors next to one ViT-B/16 forward pass, on this CPU.

Run from the repository root::

    . .venv/bin/activate
    python bench/weightfree_cost.py                     # default data folder and photo
    python bench/weightfree_cost.py --data /path/to/shared/data --photo camera-models/real/Olympus_C720UZ.jpg --runs 9

It makes two JPEGs (quality 90) from one real camera photo: a 1024x1024 centre crop (area-resized) and a
4000x3000 resize (cubic). Then, for each registered detector of ("provenance", "forensics"), for each
image, and for one ViT-B/16 forward pass (torchvision ``vit_b_16(weights=None)``, 224 px, batch 1,
``torch.inference_mode``), it starts a fresh Python subprocess that

* sets everything up (imports, detector or model, the image already decoded),
* runs ``--warmup`` calls, then ``--runs`` timed calls, and reports their median in ms,
* reports peak memory: the resident-set high-water mark (``VmHWM``) after the calls minus the resident
  set (``VmRSS``) before the first (warm-up) call, with the high-water mark reset to the current RSS
  just before that call (``/proc/self/clear_refs``): the extra memory the calls need on top of the loaded
  detector or model.

Why subprocesses and the resident-set peak rather than tracemalloc: the RSS peak counts what tracemalloc
misses (OpenCV, libjpeg, Pillow and PyTorch allocate outside Python's allocator). A fresh process per
measurement keeps one measurement's memory and caches out of the next. The image reaches the child as an
``.npy`` array plus the file bytes (no decode in the child). Linux only (/proc). The ViT timing is the forward
pass only (no resize/normalise), which favours the ViT.

The ViT is measured first and last; ratios use the faster of the two medians (the conservative choice on a
machine shared with other work). ``forensics`` is also timed with ``artifacts=True`` (full-image ELA
heatmap), which is only computed when a caller asks for heatmaps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_PHOTO = "camera-models/real/Canon_PowerShot_S40_(2).jpg"  # full tier, 2272x1704, 4:3
DETECTORS = ("provenance", "forensics")
SIZES = {"1024x1024": (1024, 1024), "4000x3000": (4000, 3000)}


# ---- child: one measurement in a fresh process ------------------------------------------------------------


def _memory_mib(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (resident peak) of this process, from /proc (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _timed(call, warmup: int, runs: int) -> dict:
    # Reset the peak to the current RSS, so that setup (imports, loading, a transient at import time)
    # cannot hide the calls' own peak.
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    before = _memory_mib("VmRSS")
    for _ in range(warmup):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "peak_rss_growth_mib": _memory_mib("VmHWM") - before,
        "rss_before_mib": before,
    }


def child_detector(name: str, image_stem: str, artifacts: bool, warmup: int, runs: int) -> dict:
    import numpy as np

    from models import create_detector
    from models.image_input import DecodedImage

    data = Path(image_stem + ".jpg").read_bytes()
    rgb = np.load(image_stem + ".npy")
    image = DecodedImage(rgb=rgb, data=data, format="JPEG", source_mode="RGB", sha256=hashlib.sha256(data).hexdigest())
    detector = create_detector(name)

    def call():
        (result,) = detector.predict([image], artifacts=artifacts)
        if not result.ok:
            raise RuntimeError(f"{name} failed: {result.error or result.skipped}")

    return _timed(call, max(1, warmup), runs)


def child_vit(warmup: int, runs: int) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vit_b_16(weights=None).eval()
    pixels = torch.randn(1, 3, 224, 224)

    def call():
        with torch.inference_mode():
            model(pixels)

    stats = _timed(call, max(1, warmup), runs)
    stats["torch_threads"] = torch.get_num_threads()
    return stats


# ---- parent: make the images, run the children, print the table ------------------------------------------


def make_images(photo: Path, folder: Path) -> dict[str, str]:
    """The benchmark JPEGs (q90) and their decoded pixels, as file stems in ``folder``."""
    import cv2
    import numpy as np
    from PIL import Image

    from models.image_input import decode_image

    rgb = decode_image(photo.read_bytes()).rgb
    height, width = rgb.shape[:2]
    side = min(height, width)
    square = rgb[(height - side) // 2 : (height - side) // 2 + side, (width - side) // 2 : (width - side) // 2 + side]
    made = {
        "1024x1024": cv2.resize(square, (1024, 1024), interpolation=cv2.INTER_AREA),
        "4000x3000": cv2.resize(rgb, (4000, 3000), interpolation=cv2.INTER_CUBIC),
    }
    stems = {}
    for label, pixels in made.items():
        stem = folder / label
        Image.fromarray(pixels).save(f"{stem}.jpg", quality=90)
        decoded = decode_image(Path(f"{stem}.jpg").read_bytes())  # what the service would hand the detector
        np.save(f"{stem}.npy", decoded.rgb)
        stems[label] = str(stem)
    return stems


def run_child(args: list[str]) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args], capture_output=True, text=True, env=env, cwd=REPO
    )
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["no output"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the shared data folder")
    parser.add_argument("--photo", default=DEFAULT_PHOTO, help="a real photo, relative to --data")
    parser.add_argument("--runs", type=int, default=7, help="timed calls per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls before timing")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: "vit" or "detector:<name>:<stem>:<artifacts>"
    args = parser.parse_args()

    if args.child:
        if args.child == "vit":
            print(json.dumps(child_vit(args.warmup, args.runs)))
        else:
            _, name, stem, artifacts = args.child.split(":", 3)
            print(json.dumps(child_detector(name, stem, artifacts == "1", args.warmup, args.runs)))
        return

    sys.path.insert(0, str(REPO))
    from models import list_detectors

    registered = [name for name in DETECTORS if name in list_detectors()]
    missing = [name for name in DETECTORS if name not in registered]
    common = ["--runs", str(args.runs), "--warmup", str(args.warmup)]
    print(f"CPU cores: {os.cpu_count()}, load average at start: {os.getloadavg()[0]:.2f}; photo: {args.photo}")
    if missing:
        print(f"not registered (skipped): {', '.join(missing)}")

    with tempfile.TemporaryDirectory() as folder:
        stems = make_images(args.data / args.photo, Path(folder))
        vit_first = run_child(["--child", "vit", *common])
        rows = []
        for name in registered:
            variants = [(name, "0")] + ([(name + " +artifacts", "1")] if name == "forensics" else [])
            for label, artifacts in variants:
                for size, stem in stems.items():
                    rows.append((label, size, run_child(["--child", f"detector:{name}:{stem}:{artifacts}", *common])))
        vit_last = run_child(["--child", "vit", *common])

    vits = [v for v in (vit_first, vit_last) if "error" not in v]
    if not vits:
        raise SystemExit(f"ViT-B/16 measurement failed: {vit_first.get('error')}")
    vit_ms = min(v["median_ms"] for v in vits)
    first, last = (v.get("median_ms", float("nan")) for v in (vit_first, vit_last))
    print(
        f"ViT-B/16 forward (224 px, batch 1, torch threads {vits[0]['torch_threads']}): median {first:.1f} ms "
        f"first, {last:.1f} ms last; peak RSS growth {vits[0]['peak_rss_growth_mib']:.1f} MiB; "
        f"reference = {vit_ms:.1f} ms"
    )
    print(f"{'detector':<24}{'image':<12}{'median ms':>10}{'min ms':>9}{'peak RSS +MiB':>15}{'ratio to ViT':>14}")
    for label, size, stats in rows:
        if "error" in stats:
            print(f"{label:<24}{size:<12}  failed: {stats['error']}")
            continue
        ratio = stats["median_ms"] / vit_ms
        print(
            f"{label:<24}{size:<12}{stats['median_ms']:>10.1f}{stats['min_ms']:>9.1f}"
            f"{stats['peak_rss_growth_mib']:>15.1f}{ratio:>14.3f}"
        )
    over = [
        f"{label} {size}"
        for label, size, stats in rows
        if "error" not in stats and "artifacts" not in label and stats["median_ms"] > vit_ms
    ]
    verdict = "MET" if not over else "MISSED by " + ", ".join(over)
    print("target (features cost less than one ViT-B/16 forward):", verdict)


if __name__ == "__main__":
    main()
