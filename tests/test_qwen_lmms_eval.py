"""The lmms-eval model `llava_codebook` on the Qwen-VL replicas: batched requests with images and videos (left-padded,
each request answered and counted as alone), loglikelihood (batched as alone; unpruned as the stock model's own
forward pass), and the processor it loads where the stock video processor needs torchvision."""

import numpy as np
import pytest
import torch
from noise_images import picture

pytest.importorskip("lmms_eval", reason="lmms-eval comes with `bash scripts/setup-env.sh test`")

from lmms_eval.api.instance import Instance
from qwen_fixtures import build_stock_checkpoint, stock_class

from llava_codebook import RedundancyCodebook
from llava_codebook.integrations.lmms_eval_model import LlavaCodebook

TASK, SPLIT = "toy", "test"
GREEDY = {"max_new_tokens": 4, "temperature": 0, "do_sample": False, "until": ["."]}
NAMES = ["qwen2.5-vl-3b", "qwen3-vl-2b"]


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """name -> (replica directory, codebook directory)."""
    out = {}
    for name in NAMES:
        root = tmp_path_factory.mktemp(name)
        directory = build_stock_checkpoint(name, root / "model")
        hidden = stock_class(name).config_class.from_pretrained(directory).text_config.hidden_size
        codebook = RedundancyCodebook(torch.randn(16, hidden, generator=torch.Generator().manual_seed(1)))
        out[name] = directory, codebook.save_pretrained(root / "codebook")
    return out


@pytest.fixture(scope="module")
def docs():
    sizes = [(112, 112), (90, 150), (130, 70), (100, 100), (60, 160)]
    return [
        {
            "question": question,
            "image": picture(*sizes[i], i),
            # A video as lmms-eval hands over decoded frames: a [frames, height, width, 3] array.
            "video": np.stack([np.asarray(picture(60, 80, 10 * i + f)) for f in range(2 + i % 3)]),
        }
        for i, question in enumerate(
            [
                "is there a cat ?",
                "what colour is the sky ?",
                "how many dogs are there ?",
                "is it red ?",
                "describe it .",
            ]
        )
    ]


def image_or_video(doc_id):
    return lambda doc: [doc["video"]] if doc_id % 2 else [doc["image"]]


def make_model(repos, name, docs, **model_args) -> LlavaCodebook:
    directory, codebook = repos[name]
    lm = LlavaCodebook(
        pretrained=str(directory), device="cpu", dtype="float32", codebook_repo=str(codebook), **model_args
    )
    lm.task_dict = {TASK: {SPLIT: docs}}
    return lm


def generate_requests(docs):
    return [
        Instance(
            "generate_until",
            (doc["question"], dict(GREEDY), image_or_video(i), i, TASK, SPLIT),
            idx=0,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


def choice_requests(docs, choices=(" yes", " no")):
    return [
        Instance(
            "loglikelihood",
            (doc["question"], choice, image_or_video(i), i, TASK, SPLIT),
            idx=j,
            metadata={"task": TASK, "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
        for j, choice in enumerate(choices)
    ]


@pytest.mark.parametrize("name", NAMES)
def test_the_processor_is_the_stock_one_with_a_pil_video_processor_where_torchvision_is_missing(repos, docs, name):
    lm = make_model(repos, name, docs, pruning_strategy="none")
    assert type(lm.processor).__name__ == stock_class(name).__name__.replace("ForConditionalGeneration", "Processor")
    assert type(lm.processor.video_processor).__name__ == "QwenFrameVideoProcessor"
    assert lm.processor.image_token == "<|image_pad|>" and lm.processor.video_token == "<|video_pad|>"


@pytest.mark.parametrize("name", NAMES)
def test_batched_generation_of_images_and_videos_matches_one_request_at_a_time(repos, docs, name):
    def run(batch_size):
        lm = make_model(repos, name, docs, pruning_strategy="codebook", keep_ratio=0.5, batch_size=batch_size)
        results = lm.generate_until(generate_requests(docs))
        return [r.text for r in results], [r.token_counts.to_dict() for r in results]

    alone, batched = run(1), run(3)
    assert batched == alone
    counts = alone[1]
    assert all(0 < c["visual_tokens_kept"] < c["visual_tokens_total"] for c in counts)
    assert all(
        c["input_tokens"] < c["input_tokens"] - c["visual_tokens_kept"] + c["visual_tokens_total"] for c in counts
    )


@pytest.mark.parametrize("name", NAMES)
def test_loglikelihood_is_the_same_batched_or_alone_and_unpruned_is_the_stock_forward(repos, docs, name):
    requests = choice_requests(docs)
    alone = make_model(repos, name, docs, keep_ratio=0.5).loglikelihood(requests)
    batched = make_model(repos, name, docs, keep_ratio=0.5, batch_size=4).loglikelihood(requests)
    for a, b in zip(alone, batched):
        assert a.text[0] == pytest.approx(b.text[0], abs=1e-4) and a.text[1] == b.text[1]
        assert a.token_counts.to_dict() == b.token_counts.to_dict()
        assert a.token_counts.visual_tokens_kept < a.token_counts.visual_tokens_total
    lm = make_model(repos, name, docs, pruning_strategy="none", batch_size=4)
    stock = stock_class(name).from_pretrained(repos[name][0], dtype=torch.float32).eval()
    for request, result in zip(requests, lm.loglikelihood(requests)):
        context, continuation, to_visual, doc_id = request.args[:4]
        visual = to_visual(docs[doc_id])[0]
        video = isinstance(visual, np.ndarray)
        prompt = lm._prompt(context, int(not video), int(video))
        inputs = lm.processor(
            text=[prompt], **({"videos": [visual]} if video else {"images": [visual]}), return_tensors="pt"
        )
        target = lm.tokenizer(continuation, add_special_tokens=False)["input_ids"]
        inputs["input_ids"] = torch.cat([inputs["input_ids"], torch.tensor([target])], dim=1)
        inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
        inputs["mm_token_type_ids"] = torch.cat(
            [inputs["mm_token_type_ids"], torch.zeros(1, len(target), dtype=torch.long)], 1
        )
        with torch.no_grad():
            logits = stock(**inputs).logits
        log_probs = torch.log_softmax(logits[0, -len(target) - 1 : -1].float(), -1)
        expected = float(-log_probs.gather(-1, torch.tensor(target)[:, None]).mean())
        assert result.text[0] == pytest.approx(expected, abs=1e-4)
