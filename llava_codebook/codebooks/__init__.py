"""Build, import, inspect and publish redundancy codebooks for any LLaVA-NeXT model.

Pipeline (one module per stage): `probe` (single-token probe and leave-one-out, stages 1-2), `divergence`,
`select` (redundancy test and clustering, stages 3-4), `dpcknn`, `build` (end to end, resumable, data-parallel),
`release` (import a released `.pt`), `hub` (push / inspect). Presets live in `presets`.
"""

from .build import BuildResult, BuildSummary, CodebookBuildError, build_codebook
from .data import ImageItem, UnreadableImageError, dataset_images, folder_images, open_image_source, pil_images
from .divergence import topk_divergence
from .dpcknn import dpc_knn
from .hub import BaseModelUnreachableError, inspect_codebook, push_codebook, verify_against_base_model
from .presets import PRESETS, RELEASE_PROBE_RANKS, RELEASE_PROMPT, BuildPreset, get_preset
from .probe import ImageProbeResult, ProbeRunner, leave_one_out, single_token_probe
from .release import import_release_codebook
from .select import redundant_mask, select_in_image, select_prototype_clusters
from .tiny_pipeline import build_tiny_pipeline_codebook

__all__ = [
    "PRESETS",
    "RELEASE_PROBE_RANKS",
    "RELEASE_PROMPT",
    "BaseModelUnreachableError",
    "BuildPreset",
    "BuildResult",
    "BuildSummary",
    "CodebookBuildError",
    "ImageItem",
    "ImageProbeResult",
    "ProbeRunner",
    "UnreadableImageError",
    "build_codebook",
    "build_tiny_pipeline_codebook",
    "dataset_images",
    "dpc_knn",
    "folder_images",
    "get_preset",
    "import_release_codebook",
    "inspect_codebook",
    "leave_one_out",
    "open_image_source",
    "pil_images",
    "push_codebook",
    "redundant_mask",
    "select_in_image",
    "select_prototype_clusters",
    "single_token_probe",
    "topk_divergence",
    "verify_against_base_model",
]
