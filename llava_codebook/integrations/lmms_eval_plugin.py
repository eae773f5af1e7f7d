"""The lmms-eval entry point: registers the model `llava_codebook` (group `lmms_eval.models`, see pyproject.toml).

lmms-eval reads every entry point of that group when it builds its model registry. The payload is a function, so
this module imports nothing from lmms-eval while lmms-eval's registry is still being built; the model class is
imported only when a run asks for `--model llava_codebook`.
"""

MODEL_NAME = "llava_codebook"
MODEL_CLASS_PATH = "llava_codebook.integrations.lmms_eval_model.LlavaCodebook"


def manifest():
    """The `ModelManifest` lmms-eval's registry (`lmms_eval.models.registry_v2`) expects from an entry point."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=MODEL_CLASS_PATH)
