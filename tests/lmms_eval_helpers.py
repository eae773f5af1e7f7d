"""A small local lmms-eval task suite for the embedded tiny model: generated images, questions in its vocabulary,
saved as a `datasets` folder, and task YAMLs that lmms-eval finds through `--include_path`. Everything is offline.

Tasks: `tiny_yesno` (generate_until, one image), `tiny_pair` (generate_until, two images per question),
`tiny_choice` (multiple_choice, hence loglikelihood requests).
"""

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image

TASKS = ("tiny_yesno", "tiny_pair", "tiny_choice")
QUESTIONS = [
    ("is there a cat in the picture ?", "yes"),
    ("is the sky blue ?", "no"),
    ("is there a dog ?", "yes"),
    ("is the house red ?", "no"),
    ("is it a photo of a road ?", "yes"),
    ("is there a person ?", "no"),
]

UTILS = """
def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def pair_to_visual(doc):
    return [doc["image"].convert("RGB"), doc["image_b"].convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    kwargs = lmms_eval_specific_kwargs or {}
    return kwargs.get("pre_prompt", "") + doc["question"] + kwargs.get("post_prompt", "")


def process_results(doc, results):
    prediction = results[0].strip().lower()
    return {"accuracy": float(prediction == doc["answer"])}
"""

COMMON = """
dataset_path: {dataset}
dataset_kwargs:
  load_from_disk: true
test_split: test
doc_to_text: !function utils.doc_to_text
lmms_eval_specific_kwargs:
  default:
    pre_prompt: ""
    post_prompt: " answer yes or no ."
metadata:
  - version: 0.0
"""

GENERATE = """
output_type: generate_until
doc_to_target: answer
generation_kwargs:
  max_new_tokens: 3
  until: ["."]
  temperature: 0
  do_sample: false
process_results: !function utils.process_results
metric_list:
  - metric: accuracy
    aggregation: mean
    higher_is_better: true
"""

CHOICE = """
output_type: multiple_choice
doc_to_visual: !function utils.doc_to_visual
doc_to_target: answer
doc_to_choice: ["yes", "no"]
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def textured(seed: int, size: tuple[int, int], flat_share: float) -> Image.Image:
    """Noise on the left, one flat colour on the right: the flat part is what the tiny codebook prunes."""
    rng = np.random.default_rng(seed)
    height, width = size
    pixels = np.empty((height, width, 3), dtype=np.uint8)
    pixels[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    noisy = int(width * (1 - flat_share))
    pixels[:, :noisy] = rng.integers(0, 256, (height, noisy, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def write_dataset(directory: Path) -> Path:
    from datasets import Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    sizes = [(112, 112), (90, 150), (130, 70), (100, 100), (60, 160), (112, 56)]
    rows = {
        "question_id": [str(i) for i in range(len(QUESTIONS))],
        "question": [q for q, _ in QUESTIONS],
        "answer": [a for _, a in QUESTIONS],
        "image": [textured(i, sizes[i], flat_share=0.2 + 0.12 * i) for i in range(len(QUESTIONS))],
        "image_b": [textured(100 + i, sizes[-1 - i], flat_share=0.5) for i in range(len(QUESTIONS))],
    }
    features = Features(
        {
            "question_id": Value("string"),
            "question": Value("string"),
            "answer": Value("string"),
            "image": ImageFeature(),
            "image_b": ImageFeature(),
        }
    )
    DatasetDict({"test": Dataset.from_dict(rows, features=features)}).save_to_disk(str(directory))
    return directory


def write_tasks(directory: Path) -> Path:
    """Write the dataset and the three task YAMLs into `directory` (the folder to pass as `--include_path`)."""
    directory.mkdir(parents=True, exist_ok=True)
    dataset = write_dataset(directory / "data")
    (directory / "utils.py").write_text(textwrap.dedent(UTILS).lstrip())
    common = COMMON.format(dataset=dataset)
    (directory / "tiny_yesno.yaml").write_text(
        "task: tiny_yesno\ndoc_to_visual: !function utils.doc_to_visual\n" + common + GENERATE
    )
    (directory / "tiny_pair.yaml").write_text(
        "task: tiny_pair\ndoc_to_visual: !function utils.pair_to_visual\n" + common + GENERATE
    )
    (directory / "tiny_choice.yaml").write_text("task: tiny_choice\n" + common + CHOICE)
    return directory
