"""Where the toy world's committed files live inside the package."""

from __future__ import annotations

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toy"


def toy_pipeline_path() -> Path:
    """Directory of the committed toy StableDiffusionPipeline (load it with `from_pretrained`)."""
    return DATA_DIR / "pipeline"


def toy_judge_path() -> Path:
    """The committed toy judge's weights (safetensors)."""
    return DATA_DIR / "judge.safetensors"


SD3_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "toy_sd3"


def toy_sd3_pipeline_path() -> Path:
    """Directory of the committed toy MMDiT (``toy-sd3``), a StableDiffusion3Pipeline."""
    return SD3_DATA_DIR / "pipeline"
