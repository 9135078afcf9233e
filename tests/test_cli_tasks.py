"""The CLI on real jobs: file formats, label names, pairs, regression, metrics, --save-model."""
import json
import random

import pytest

from models import WORDS
from test_cli import run

pytestmark = pytest.mark.reference
POS = {"good", "great", "fine", "nice"}


def examples(n, seed, pairs=False, regression=False, names=False):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.choices(WORDS, k=5), rng.choices(WORDS, k=4)
        hits = sum(w in POS for w in a + b)
        label = (hits / 9 * 5) if regression else int(hits > 0)
        row = {"sentence1" if pairs else "sentence": " ".join(a), "label": ["neg", "pos"][label] if names else label}
        if pairs:
            row["sentence2"] = " ".join(b)
        out.append(row)
    return out


def write(path, rows):
    import pandas as pd

    frame = pd.DataFrame(rows)
    {".csv": lambda: frame.to_csv(path, index=False), ".parquet": lambda: frame.to_parquet(path),
     ".jsonl": lambda: frame.to_json(path, orient="records", lines=True)}[path.suffix]()
    return str(path)


ARGS = ["--epochs", "2", "--batch-size", "8", "--max-length", "16", "--intervals-per-epoch", "2",
        "--evals-per-epoch", "1", "--no-progress", "--no-plot"]


def test_csv_with_label_names_reports_f1_and_saves_a_usable_model(tiny_ckpt, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification

    from autofreeze_ext.tasks import encode, load_task
    from autofreeze_ext.training import evaluate

    train = write(tmp_path / "train.csv", examples(40, 0, names=True))
    dev = write(tmp_path / "dev.csv", examples(16, 1, names=True))
    saved = tmp_path / "model"
    rc, out, err = run(["finetune", "--mode", "autofreeze", "--policy", "gradient", "--model", tiny_ckpt, "--train",
                        train, "--dev", dev, "--metric", "f1", "--save-model", str(saved), "--out", str(tmp_path / "o"),
                        *ARGS], capsys)
    assert rc == 0, err
    rep = json.loads((tmp_path / "o" / "finetune_autofreeze.json").read_text())
    assert rep["metric"] == "f1" and rep["labels"]["id2label"] == {"0": "neg", "1": "pos"}
    assert set(rep["evals"][-1]["metrics"]) == {"accuracy", "f1", "macro_f1", "mcc"}
    assert rep["best_score"] == max(e["metrics"]["f1"] for e in rep["evals"]) and "best dev f1" in out
    assert rep["frozen_depth"][-1]["depth"] >= 1  # the saved model holds frozen blocks too
    model = AutoModelForSequenceClassification.from_pretrained(str(saved))
    assert model.config.id2label == {0: "neg", 1: "pos"}
    from transformers import AutoTokenizer

    data = encode(load_task(dev, label_space=load_task(train).label_space), AutoTokenizer.from_pretrained(str(saved)),
                  16)
    assert evaluate(model, data) == pytest.approx(rep["final_accuracy"])


def test_jsonl_pairs_and_parquet_regression(tiny_ckpt, tmp_path, capsys):
    train = write(tmp_path / "train.jsonl", examples(40, 0, pairs=True))
    dev = write(tmp_path / "dev.jsonl", examples(16, 1, pairs=True))
    rc, _, err = run(["finetune", "--mode", "full", "--model", tiny_ckpt, "--train", train, "--dev", dev,
                      "--out", str(tmp_path / "p"), *ARGS], capsys)
    assert rc == 0, err
    rep = json.loads((tmp_path / "p" / "finetune_full.json").read_text())
    assert rep["text_columns"] == ["sentence1", "sentence2"] and rep["metric"] == "accuracy"
    train = write(tmp_path / "train.parquet", examples(40, 0, pairs=True, regression=True))
    dev = write(tmp_path / "dev.parquet", examples(16, 1, pairs=True, regression=True))
    rc, out, err = run(["compare", "--modes", "full,autofreeze+cache", "--model", tiny_ckpt, "--train", train,
                        "--dev", dev, "--out", str(tmp_path / "r"), *ARGS], capsys)
    assert rc == 0, err
    reps = json.loads((tmp_path / "r" / "compare.json").read_text())["runs"]
    for r in reps:
        assert r["metric"] == "pearson" and r["labels"] == {"kind": "regression", "num_labels": 1, "id2label": None}
        assert set(r["evals"][0]["metrics"]) == {"pearson", "spearman"} and r["best_accuracy"] is None
        assert -1.0 <= r["best_score"] <= 1.0
    assert "best dev pearson" in out


def test_bad_task_data_is_a_clear_cli_error(tiny_ckpt, tmp_path, capsys):
    train = write(tmp_path / "train.csv", examples(20, 0, names=True))
    dev_rows = examples(4, 1, names=True) + [{"sentence": "good film", "label": "neutral"}]
    dev = write(tmp_path / "dev.csv", dev_rows)
    rc, _, err = run(["finetune", "--model", tiny_ckpt, "--train", train, "--dev", dev, *ARGS], capsys)
    assert rc == 2 and "dev.csv:6: label 'neutral' does not occur in" in err and "train.csv" in err
    rc, _, err = run(["finetune", "--model", tiny_ckpt, "--train", train, "--dev", train, "--metric", "pearson",
                      *ARGS], capsys)
    assert rc == 2 and "metric 'pearson' does not apply to a classification task" in err
