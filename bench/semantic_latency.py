"""Per-image latency of the semantic detectors at batch 1 and batch 8, side by side, with the batching speed-up.

By default every detector runs on tiny random models built here (the same code paths as real weights), so the
numbers measure the pipeline's overhead and how batching amortises it, not real model cost. On a machine with
the weights (and a GPU), ``--real`` uses each detector's default configuration (published backbones and heads);
``--config NAME=JSON`` overrides keys of one detector, e.g. local paths:

    python bench/semantic_latency.py
    python bench/semantic_latency.py --real --device cuda \\
        --config 'dino={"head": "heads/dino_svm.npz"}' --config 'clip_probe_ufd={"head_weights": "fc_weights.pth"}'
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models import create_detector  # noqa: E402
from models.dino import DinoSvmHead  # noqa: E402
from models.image_input import DecodedImage, decode_image  # noqa: E402

DETECTORS = ["clip_h14", "clip_bigg", "clip_probe_ufd", "clip_probe_cues", "clip_probe_rine", "dino"]


def tiny_configs(folder: Path) -> dict[str, dict]:
    """Random tiny backbones and heads, saved to ``folder`` and described as detector configs."""
    import open_clip
    from transformers import (
        BitImageProcessor,
        CLIPImageProcessor,
        CLIPVisionConfig,
        CLIPVisionModel,
        Dinov2Config,
        Dinov2Model,
    )

    from models.clip_detector import RineHead

    torch.manual_seed(0)
    # open_clip: a ViT with 4 blocks of width 128 at 224 px (the input size RINE crops to).
    name = "imgverify-bench-tiny"
    (folder / f"{name}.json").write_text(
        json.dumps(
            {
                "embed_dim": 128,
                "vision_cfg": {"image_size": 224, "layers": 4, "width": 128, "patch_size": 16, "head_width": 32},
                "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
            }
        )
    )
    open_clip.add_model_config(folder / f"{name}.json")
    torch.save(open_clip.create_model(name).state_dict(), folder / "open_clip.pt")
    backbone = {"model_name": name, "pretrained": str(folder / "open_clip.pt")}
    torch.save(torch.nn.Linear(128, 1).state_dict(), folder / "ufd.pth")
    torch.save(RineHead(in_dim=128, n_layers=4, nproj=4, proj_dim=128).state_dict(), folder / "rine.pth")

    # transformers CLIPVisionModel at 336 px (clip-cues' input size) and a linear head in clip-cues' format.
    hf_clip = folder / "hf_clip"
    CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=128,
            num_hidden_layers=4,
            intermediate_size=256,
            num_attention_heads=4,
            image_size=336,
            patch_size=28,
        )
    ).save_pretrained(hf_clip)
    CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}).save_pretrained(hf_clip)
    fc = torch.nn.Linear(128, 1)
    torch.save(
        {
            "state_dict": {f"model.classification_head.fc.{k}": v for k, v in fc.state_dict().items()},
            "model_type": "linear",
        },
        folder / "cues.ckpt",
    )

    # DINOv2 with the published preprocessing (256 / 224) and a head fitted on random embeddings.
    dino = folder / "dino"
    Dinov2Model(
        Dinov2Config(
            hidden_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
            patch_size=14,
            image_size=224,
        )
    ).save_pretrained(dino)
    BitImageProcessor(
        size={"shortest_edge": 256},
        crop_size={"height": 224, "width": 224},
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(dino)
    rng = np.random.default_rng(0)
    DinoSvmHead(cv=2, backbone_id=str(dino)).fit(rng.normal(size=(20, 128)), np.arange(20) % 2).save(
        folder / "dino.npz"
    )
    return {
        "clip_h14": dict(backbone),
        "clip_bigg": dict(backbone),
        "clip_probe_ufd": {**backbone, "head_weights": str(folder / "ufd.pth"), "head_sha256": None},
        "clip_probe_rine": {**backbone, "head_weights": str(folder / "rine.pth"), "head_sha256": None},
        "clip_probe_cues": {"model_name": str(hf_clip), "head_weights": str(folder / "cues.ckpt"), "head_sha256": None},
        "dino": {"model_id": str(dino), "head": str(folder / "dino.npz")},
    }


def sample_images(n: int, size: tuple[int, int] = (640, 480)) -> list[DecodedImage]:
    """Random JPEGs, decoded the one supported way (a fixed size, so batches are comparable)."""
    rng = np.random.default_rng(0)
    images = []
    for _ in range(n):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
        images.append(decode_image(buffer.getvalue()))
    return images


def per_image_ms(detector, images: list[DecodedImage], repeats: int) -> tuple[float, float]:
    """Median ms per image of ``predict`` at batch 1 and at batch ``len(images)``, measured interleaved."""
    for batch in (images[:1], images):  # warm-up (allocations, lazy imports, cuDNN autotune)
        failed = [r.error or r.skipped for r in detector.predict(batch) if not r.ok]
        if failed:
            raise RuntimeError(f"{detector.name} failed: {failed[0]}")
    times: dict[int, list[float]] = {1: [], len(images): []}
    for _ in range(repeats):
        # Alternating the two batch sizes exposes both to the same background load.
        for batch in (images[:1], images):
            if detector.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            detector.predict(batch)
            if detector.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[len(batch)].append((time.perf_counter() - start) / len(batch))
    return 1000.0 * statistics.median(times[1]), 1000.0 * statistics.median(times[len(images)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="published models (default configs) instead of tiny ones")
    parser.add_argument("--config", action="append", default=[], metavar="NAME=JSON", help="override one detector")
    parser.add_argument("--detectors", nargs="+", default=DETECTORS, choices=DETECTORS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    overrides = {}
    for item in args.config:
        name, _, text = item.partition("=")
        overrides[name] = json.loads(text)
    with tempfile.TemporaryDirectory() as tmp:
        configs = {name: {} for name in DETECTORS} if args.real else tiny_configs(Path(tmp))
        if args.real and "dino" not in overrides:
            configs["dino"] = {"return_embedding": True}  # no published head: time the embedding
        images = sample_images(8)
        print(
            f"device={args.device} torch_threads={torch.get_num_threads()} "
            f"models={'published' if args.real else 'tiny random'} images=640x480 JPEG repeats={args.repeats} "
            f"load_avg_1min={os.getloadavg()[0]:.1f} cpus={os.cpu_count()}"
        )
        print(f"{'detector':<17}{'batch 1 ms/img':>16}{'batch 8 ms/img':>16}{'speed-up b8':>13}")
        for name in args.detectors:
            detector = create_detector(name, {**configs[name], **overrides.get(name, {})}, device=args.device)
            single, batched = per_image_ms(detector, images, args.repeats)
            print(f"{name:<17}{single:>16.2f}{batched:>16.2f}{single / batched:>12.2f}x", flush=True)
            del detector
        print(f"load_avg_1min at end={os.getloadavg()[0]:.1f} (ratios are only comparable within one run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
