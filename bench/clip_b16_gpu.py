"""clip_b16's backbone on a GPU: images/s at several batch sizes, fp32 vs fp16, against the same model on the CPU.

The speed of a ViT does not depend on its weight values, so this builds ``CLIPVisionModelWithProjection`` with
the ViT-B/16 configuration of ``openai/clip-vit-base-patch16`` and random weights: it runs on a GPU machine that
cannot reach the hub or carry the 90 MB weights file. Only torch and transformers are imported.

    python bench/clip_b16_gpu.py [--batches 1 8 32 128] [--cpu-batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

# openai/clip-vit-base-patch16's vision tower (its config.json).
VIT_B16 = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    patch_size=16,
    image_size=224,
    projection_dim=512,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def images_per_second(model: torch.nn.Module, batch: int, device: str, dtype: torch.dtype, seconds: float) -> float:
    """Forward passes of one batch, repeated for about ``seconds`` after a warm-up; images per second."""
    pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    with torch.inference_mode():
        for _ in range(3):
            model(pixel_values=pixels)
        sync()
        start, count = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            model(pixel_values=pixels)
            count += 1
        sync()
    return batch * count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--cpu-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    model = CLIPVisionModelWithProjection(CLIPVisionConfig(**VIT_B16)).eval()
    cpu = images_per_second(model, args.cpu_batch, "cpu", torch.float32, args.seconds)
    print(
        f"cpu fp32 batch {args.cpu_batch}: {cpu:.1f} images/s ({1000 / cpu:.1f} ms/image, "
        f"{torch.get_num_threads()} threads)"
    )
    if not torch.cuda.is_available():
        print("no CUDA device: GPU rows skipped")
        return
    print(f"gpu: {torch.cuda.get_device_name()}")
    print("| batch | fp32 images/s | fp16 images/s | fp16 vs CPU |")
    print("|---|---|---|---|")
    for batch in args.batches:
        fp32 = images_per_second(model.to("cuda", torch.float32), batch, "cuda", torch.float32, args.seconds)
        fp16 = images_per_second(model.to("cuda", torch.float16), batch, "cuda", torch.float16, args.seconds)
        print(f"| {batch} | {fp32:.0f} | {fp16:.0f} | {fp16 / cpu:.0f}x |")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
