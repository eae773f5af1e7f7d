"""Build, import, inspect and publish redundancy codebooks for any LLaVA-NeXT model.

Command line::

    llava-codebook build --model llava-hf/llama3-llava-next-8b-hf --images coco/train2017 --num-images 500 --out cb/
    llava-codebook build --model ... --images some/dataset --split train --image-column image --id-column id --out cb/
    llava-codebook push cb/ --repo org/codebook-llama3-llava-next-8b [--revision v1] [--create-pr]
    llava-codebook import-seed coco_train_500samples_numPrototypes-454.pt --base-model liuhaotian/llava-v1.5-7b --out cb15/
    llava-codebook inspect org/codebook-llama3-llava-next-8b

Python: `build_codebook(model, processor, images, out=...)`, `push_codebook(path, repo_id)`,
`import_release_codebook(path, base_model, out=...)`, `inspect_codebook(reference)`.

How a codebook is built (one module per stage):

1. `probe.single_token_probe`: per image, the crop's patch tokens are ranked by cosine similarity to [CLS] at the
   vision feature layer (by index for towers without [CLS]); the release's 96 ranks are probed by feeding the
   language model that one post-projector token inside the release's prompt; `p_max` is the largest probability
   of the softmax over the top-50 first-token logits. **Only the base crop is probed** (the first crop of the
   processor's `pixel_values`: the whole image resized to the tower's 336 px for the released models), as the
   release does; the codebook is applied to every crop at inference.
2. `probe.leave_one_out`: divergence of the first-token distribution when the token is replaced by the pad-token
   embedding inside its 3x3 block (context level) and when its whole 3x3 block is replaced inside the full crop
   (global level), on the intact run's top-10 logits. Default divergence: the release's formula (`"release"`),
   because the released thresholds were tuned on it; the textbook Jensen-Shannon divergence is `divergence="jsd"`
   (see `divergence`). Both are stored, so switching does not re-probe.
3. `select.redundant_mask`: `ctx + 16 * global < jsd_thres` and `p_max < top1_prob_thres`, thresholds from the
   named presets `llava-1.5`, `llava-next-llama3`, `llava-ov` (`presets`).
4. `select.select_in_image` then `select.select_prototype_clusters`: deterministic DPC-KNN (`dpcknn`) per image,
   then over all kept tokens; clusters spanning enough distinct images are kept.
5. The codebook is every member of the kept clusters, saved with its provenance (`build`).

Builds are resumable (per-image results in the work directory, reused only for the same image content and probe
settings; Ctrl-C raises `BuildInterrupted`, which says how far the build got), data-parallel under `accelerate launch` /
`torchrun`, and skip (and report) unreadable images.
"""

from .build import BuildInterrupted, BuildResult, BuildSummary, CodebookBuildError, build_codebook
from .data import ImageItem, UnreadableImageError, dataset_images, folder_images, open_image_source, pil_images
from .divergence import topk_divergence
from .dpcknn import dpc_knn
from .hub import BaseModelUnreachableError, inspect_codebook, push_codebook, verify_against_base_model
from .presets import PRESETS, RELEASE_PROBE_RANKS, RELEASE_PROMPT, BuildPreset, get_preset
from .probe import ImageProbeResult, ProbeLayout, ProbeRunner, leave_one_out, single_token_probe
from .probe_mrope import MRopeProbeRunner, probe_runner
from .release import import_release_codebook
from .select import redundant_mask, select_in_image, select_prototype_clusters
from .tiny_pipeline import build_tiny_pipeline_codebook

__all__ = [
    "PRESETS",
    "RELEASE_PROBE_RANKS",
    "RELEASE_PROMPT",
    "BaseModelUnreachableError",
    "BuildInterrupted",
    "BuildPreset",
    "BuildResult",
    "BuildSummary",
    "CodebookBuildError",
    "ImageItem",
    "ImageProbeResult",
    "MRopeProbeRunner",
    "ProbeLayout",
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
    "probe_runner",
    "push_codebook",
    "redundant_mask",
    "select_in_image",
    "select_prototype_clusters",
    "single_token_probe",
    "topk_divergence",
    "verify_against_base_model",
]
