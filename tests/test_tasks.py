"""Task data: formats, columns, labels, pairs, metrics (no model)."""
import json
import os

import pytest

from autofreeze_ext.tasks import (Columns, DataError, LabelSpace, check_metric, compute, encode, load_task,
                                  task_from_records)

pytestmark = pytest.mark.reference
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
ROWS = [("a fine film , \"he said\"", "the plot, it was good", "positive"),
        ("bad acting", "\"awful\" movie", "negative"),
        ("very nice", "not terrible", "positive")]


def write(tmp_path, fmt, header=("sentence1", "sentence2", "label"), rows=ROWS):
    import pandas as pd

    frame = pd.DataFrame(list(rows), columns=list(header))
    path = tmp_path / f"data.{fmt}"
    if fmt == "tsv":  # GLUE style: no quoting, bare quote characters
        path.write_text("\t".join(header) + "\n" + "".join("\t".join(map(str, r)) + "\n" for r in rows))
    elif fmt == "csv":
        frame.to_csv(path, index=False)  # pandas quotes the fields holding commas and quotes
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(header, r))) + "\n" for r in rows))
    else:
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet"])
def test_every_format_reads_pairs_and_label_names(tmp_path, fmt):
    t = load_task(write(tmp_path, fmt))
    assert t.texts == [r[0] for r in ROWS] and t.text_pairs == [r[1] for r in ROWS]
    assert t.label_space.kind == "names" and t.label_space.id2label == {0: "negative", 1: "positive"}
    assert t.labels == [1, 0, 1] and t.num_labels == 2


def test_format_flag_overrides_the_extension(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("text,label\n\"a, b\",1\nc,0\n")
    assert load_task(str(path), fmt="csv").texts == ["a, b", "c"]


def test_unknown_extension_and_missing_file_are_clear_errors(tmp_path):
    (tmp_path / "x.xyz").write_text("a\n")
    with pytest.raises(DataError, match="--format"):
        load_task(str(tmp_path / "x.xyz"))
    with pytest.raises(DataError, match="no such file"):
        load_task(str(tmp_path / "missing.tsv"))


def test_default_columns_follow_glue_names(tmp_path):
    t = load_task(write(tmp_path, "tsv", ("question", "sentence", "label")))
    assert t.columns == Columns("question", "sentence", "label")
    t = load_task(write(tmp_path, "tsv", ("sentence", "x", "label")))
    assert t.text_pairs is None and t.columns.text == "sentence"


def test_explicit_columns_and_missing_ones(tmp_path):
    path = write(tmp_path, "csv", ("review", "other", "stars"))
    t = load_task(path, columns=Columns(text="review", label="stars"))
    assert t.texts[1] == "bad acting" and t.text_pairs is None
    with pytest.raises(DataError, match="no text column found"):
        load_task(path)
    with pytest.raises(DataError, match="no label column 'nope'"):
        load_task(path, columns=Columns(text="review", label="nope"))


def test_dev_label_unseen_in_training_names_file_line_and_value(tmp_path):
    train = load_task(write(tmp_path, "tsv"))
    (tmp_path / "dev").mkdir()
    dev_rows = [("x", "y", "positive"), ("x", "y", "neutral")]
    path = write(tmp_path / "dev", "tsv", rows=dev_rows)
    with pytest.raises(DataError, match=r"data\.tsv:3: label 'neutral' does not occur in train\.tsv"):
        load_task(path, label_space=train.label_space, train_path="train.tsv")


def test_integer_and_regression_labels(tmp_path):
    ints = load_task(write(tmp_path, "tsv", rows=[("a", "b", "0"), ("c", "d", "2"), ("e", "f", "1")]))
    assert ints.label_space.kind == "ids" and ints.num_labels == 3 and ints.labels == [0, 2, 1]
    # class ids with a gap: an error (class 1 would be a class no row teaches), unless asked for
    with pytest.raises(DataError, match=r"class id\(s\) 1 never occur.*--label-kind classes to keep 3"):
        load_task(write(tmp_path, "tsv", rows=[("a", "b", "0"), ("c", "d", "2")]))
    gaps = load_task(write(tmp_path, "tsv", rows=[("a", "b", "0"), ("c", "d", "2")]), label_kind="classes")
    assert gaps.num_labels == 3 and gaps.labels == [0, 2]
    reg = load_task(write(tmp_path, "jsonl", rows=[("a", "b", 3.8), ("c", "d", 5.0)]))
    assert reg.label_space.regression and reg.num_labels == 1 and reg.labels == [3.8, 5.0]
    forced = LabelSpace.infer(["1", "2"], lambda i: f"row {i}", kind="regression")
    assert forced.regression
    with pytest.raises(DataError, match="negative"):
        load_task(write(tmp_path, "tsv", rows=[("a", "b", "-1")]))
    with pytest.raises(DataError, match=r"data\.tsv:3: the label is empty"):
        load_task(write(tmp_path, "tsv", rows=[("a", "b", "1"), ("c", "d", " ")]))


def test_labels_of_mixed_kinds_or_not_finite_are_errors(tmp_path):
    with pytest.raises(DataError, match=r"data\.tsv:3: label 'nan' is not a finite number"):
        load_task(write(tmp_path, "tsv", rows=[("a", "b", "1.5"), ("c", "d", "nan"), ("e", "f", "2.5")]))
    with pytest.raises(DataError, match=r"mix numbers \(.*data\.tsv:2: '0'\) and names \(.*data\.tsv:4: "
                                        r"'negative'\).*--label-kind classes"):
        load_task(write(tmp_path, "tsv", rows=[("a", "b", "0"), ("c", "d", "1"), ("e", "f", "negative")]))
    named = load_task(write(tmp_path, "tsv", rows=[("a", "b", "0"), ("e", "f", "negative")]), label_kind="classes")
    assert named.label_space.names == ["0", "negative"]


def test_records_and_datasets_objects():
    recs = [{"text": "good film", "label": "pos"}, {"text": "bad film", "label": "neg"}]
    t = task_from_records(recs)
    assert t.texts == ["good film", "bad film"] and t.labels == [1, 0]
    with pytest.raises(DataError, match="dicts"):
        task_from_records(["good"])


def test_pairs_are_tokenised_as_pairs(tmp_path):
    from transformers import BertTokenizerFast

    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d"]) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    t = task_from_records([{"sentence1": "a b c d a b", "sentence2": "c d", "label": 0},
                           {"sentence1": "a", "sentence2": "b", "label": 1}])  # two classes: a classifier's minimum
    enc = encode(t, tok, max_length=8)
    ids = enc["input_ids"][0].tolist()
    assert ids.count(3) == 2 and ids[0] == 2  # [CLS] a ... [SEP] c d [SEP]
    assert enc["token_type_ids"][0].tolist()[-3:] == [1, 1, 1]  # the pair's tokens kept (longest_first)
    reg = task_from_records([{"text": "a", "label": 0.5}])
    assert encode(reg, tok, 4)["labels"].dtype.is_floating_point


def test_metrics_match_their_definitions():
    m = compute([1, 0, 1, 1], [1, 0, 0, 1], regression=False)
    assert m["accuracy"] == 0.75 and m["f1"] == pytest.approx(0.8)  # P 2/3, R 1
    assert m["mcc"] == pytest.approx(0.5773502691896258)
    r = compute([0.1, 0.4, 0.35, 0.8], [0.0, 0.5, 0.3, 1.0], regression=True)
    assert r["spearman"] == pytest.approx(1.0) and 0.95 < r["pearson"] < 1.0
    assert compute([1.0, 1.0], [0.0, 1.0], regression=True)["pearson"] == 0.0  # constant prediction
    assert check_metric(None, True) == "pearson" and check_metric(None, False) == "accuracy"
    with pytest.raises(ValueError, match="does not apply to a regression task"):
        check_metric("f1", True)


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="needs ../shared/data")
@pytest.mark.parametrize("task,rows,kind", [("mrpc", 3668, "ids"), ("stsb", 5749, "regression")])
def test_shared_tsvs_with_bare_quotes_keep_every_row(task, rows, kind):
    t = load_task(os.path.join(SHARED, task, "train.tsv"))
    with open(os.path.join(SHARED, task, "train.tsv"), encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    assert len(t) == rows == len(lines) and t.label_space.kind == kind
    assert any('"' in s for s in t.texts + t.text_pairs)
    assert [f"{a}\t{b}" for a, b in zip(t.texts, t.text_pairs)] == [ln.rsplit("\t", 1)[0] for ln in lines]


def test_a_training_file_of_one_class_is_an_error(tmp_path):
    from autofreeze_ext.tasks import DataError, load_task

    p = tmp_path / "one.tsv"
    p.write_text("sentence\tlabel\n" + "".join(f"row {i}\t0\n" for i in range(5)))
    with pytest.raises(DataError, match="at least two classes"):
        load_task(str(p))
    p.write_text("sentence\tlabel\n" + "".join(f"row {i}\tpos\n" for i in range(5)))
    with pytest.raises(DataError, match="every training label is 'pos'"):
        load_task(str(p))
