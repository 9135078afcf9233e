"""Bad input and faults: a one-line error before anything trains, and nothing lost at the end.

Each test names the fault it stands for in the README's "Faults and bad input" table."""
import json
import os
import shutil

import pytest

from autofreeze_ext._io import atomic_json
from test_cli import run, write_tsv

pytestmark = pytest.mark.reference


@pytest.fixture()
def task(tmp_path):
    return write_tsv(tmp_path / "train.tsv", 24), write_tsv(tmp_path / "dev.tsv", 8, seed=1)


def finetune(tiny_ckpt, task, tmp_path, capsys, *extra, cmd="finetune"):
    out = str(tmp_path / "out")
    args = [cmd, "--model", tiny_ckpt, "--train", task[0], "--dev", task[1], "--epochs", "1", "--batch-size", "8",
            "--max-length", "12", "--no-progress", "--no-plot", "--out", out, *extra]
    if cmd == "finetune" and "--mode" not in extra:
        args += ["--mode", "full"]
    return run(args, capsys)


def refused_before_training(rc, stdout, err, match):
    assert rc == 2, err
    errors = [line for line in err.splitlines() if line.startswith("autofreeze: error:")]
    assert len(errors) == 1 and match in errors[0], err
    assert "Traceback" not in err and "train time" not in stdout  # nothing trained


def test_compare_checks_every_mode_before_the_first_trains(tiny_ckpt, task, tmp_path, capsys):
    saved = tmp_path / "saved"
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--modes", "full,autofreze+cache",
                               "--save-model", str(saved), cmd="compare")
    refused_before_training(rc, stdout, err, "unknown mode 'autofreze+cache'")
    assert not (saved / "full").exists()  # the first mode did not train (and save) first


@pytest.mark.parametrize("option", ["--out", "--save-model", "--checkpoint-dir"])
def test_an_output_path_that_cannot_be_written_is_refused_before_training(option, tiny_ckpt, task, tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, option, str(a_file))
    refused_before_training(rc, stdout, err, f"{option} {a_file}: a file of that name exists")
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, option, "/proc/self/autofreeze-out")
    refused_before_training(rc, stdout, err, "cannot write there")


def test_save_model_refuses_a_folder_with_files_unless_overwrite(tiny_ckpt, task, tmp_path, capsys):
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--save-model", str(folder))
    refused_before_training(rc, stdout, err, "not empty; pass --overwrite")
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--save-model", str(folder), "--overwrite")
    assert rc == 0, err
    assert json.loads((folder / "config.json").read_text())["architectures"]


def test_a_failed_save_at_the_end_still_writes_the_report(tiny_ckpt, task, tmp_path, capsys, monkeypatch):
    import transformers

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", full_disk)
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--save-model", str(tmp_path / "saved"))
    assert rc == 1 and "could not save the model" in err and "No space left" in err, err
    rep = json.loads((tmp_path / "out" / "finetune_full.json").read_text())
    assert rep["saved_model"] is None and "No space left" in rep["save_error"] and rep["steps"] == 3


def test_custom_train_without_dev_is_refused(tiny_ckpt, task, tmp_path, capsys):
    rc, stdout, err = run(["finetune", "--model", tiny_ckpt, "--train", task[0], "--max-length", "12",
                           "--no-progress", "--out", str(tmp_path / "o")], capsys)
    refused_before_training(rc, stdout, err, "without --dev")


@pytest.mark.parametrize("extra, match", [
    (("--max-length", "100"), "longer than the model's position limit (32 tokens"),
    (("--threads", "0"), "--threads must be >= 1"),
    (("--grad-accum", "16"), "--grad-accum 16 is larger than --batch-size 8"),
])
def test_numbers_out_of_range_are_refused(extra, match, tiny_ckpt, task, tmp_path, capsys):
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, *extra)
    refused_before_training(rc, stdout, err, match)


def test_stale_checkpoint_temporaries_are_removed(tiny_ckpt, task, tmp_path, capsys):
    ck = tmp_path / "ck"
    ck.mkdir()
    stale = ck / "checkpoint.pt.tmp999999999"  # no such process: a write a kill -9 interrupted
    stale.write_bytes(b"half a checkpoint")
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--checkpoint-dir", str(ck))
    assert rc == 0, err
    assert not stale.exists() and (ck / "checkpoint.pt").exists()


def test_report_json_is_strict_json(tmp_path):
    path = str(tmp_path / "r.json")
    atomic_json(path, {"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2.5})
    text = open(path).read()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2.5}


def test_a_jsonl_file_with_a_byte_order_mark_reads(tmp_path):
    from autofreeze_ext.tasks import load_task

    path = tmp_path / "t.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"sentence": "good film", "label": 1}\n{"sentence": "bad", "label": 0}\n')
    assert load_task(str(path)).labels == [1, 0]


def test_a_diverging_run_stops_with_an_error_and_keeps_the_last_good_checkpoint(tiny_ckpt, task, tmp_path, capsys):
    import torch

    ck = tmp_path / "ck"
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--lr", "inf", "--checkpoint-dir", str(ck),
                               "--checkpoint-every", "1")
    assert rc == 2 and "training diverged" in err and "Traceback" not in err, err
    if (ck / "checkpoint.pt").exists():  # whatever is on disk holds finite weights
        state = torch.load(ck / "checkpoint.pt", weights_only=False)
        assert all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def _checkpointed(tiny_ckpt, task, tmp_path, capsys, *extra):
    ck = tmp_path / "ck"
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--checkpoint-dir", str(ck), "--checkpoint-every", "1",
                          *extra)
    assert rc == 0, err
    return ck


@pytest.mark.parametrize("changed, match", [
    (("--max-length", "10"), "--max-length 12 there, 10 now"),
    (("--batch-size", "4"), "--batch-size 8 there, 4 now"),
])
def test_resume_refuses_options_that_differ_from_the_checkpoint(changed, match, tiny_ckpt, task, tmp_path, capsys):
    ck = _checkpointed(tiny_ckpt, task, tmp_path, capsys, "--stop-after-steps", "2")
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--checkpoint-dir", str(ck), "--resume", *changed)
    refused_before_training(rc, stdout, err, match)


def test_resume_accepts_another_spelling_of_the_same_files(tiny_ckpt, task, tmp_path, capsys, monkeypatch):
    """A run resumed from another folder names its data by another path (relative from there,
    ``run/../data``, a link): the same file, so it resumes; another file of the same relative
    name is refused. The snapshot sweeps of BENCHMARKS hit this."""
    monkeypatch.chdir(tmp_path)
    ck = _checkpointed(tiny_ckpt, ("train.tsv", task[1]), tmp_path, capsys, "--stop-after-steps", "2")
    (tmp_path / "elsewhere").mkdir()
    os.symlink(task[0], tmp_path / "link.tsv")
    write_tsv(tmp_path / "elsewhere" / "train.tsv", 24, seed=5)  # another file of the same relative name
    cases = ((tmp_path, str(tmp_path / "elsewhere" / ".." / "train.tsv")), (tmp_path, "link.tsv"),
             (tmp_path / "elsewhere", "../train.tsv"))
    shutil.copytree(ck, tmp_path / "ck_first")
    for cwd, train in cases:
        shutil.rmtree(ck)
        shutil.copytree(tmp_path / "ck_first", ck)  # each from the checkpoint the relative path wrote
        monkeypatch.chdir(cwd)
        rc, _, err = finetune(tiny_ckpt, (train, task[1]), tmp_path, capsys, "--checkpoint-dir", str(ck),
                              "--resume", "--stop-after-steps", "3")
        assert rc == 0, err
        report = json.load(open(tmp_path / "out" / "finetune_full.json"))
        assert report["resumed_at_steps"] and report["steps"] == 3
    shutil.rmtree(ck)
    shutil.copytree(tmp_path / "ck_first", ck)
    rc, stdout, err = finetune(tiny_ckpt, ("train.tsv", task[1]), tmp_path, capsys, "--checkpoint-dir", str(ck),
                               "--resume")  # in elsewhere/: its own train.tsv
    refused_before_training(rc, stdout, err, "--train")


def test_resume_on_an_empty_folder_says_it_starts_fresh(tiny_ckpt, task, tmp_path, capsys, caplog):
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--checkpoint-dir", str(tmp_path / "empty"), "--resume")
    assert rc == 0, err
    assert "no checkpoint in" in caplog.text and "starting fresh" in caplog.text


def test_a_damaged_checkpoint_falls_back_to_the_one_before(tiny_ckpt, task, tmp_path, capsys, caplog):
    ck = _checkpointed(tiny_ckpt, task, tmp_path, capsys, "--stop-after-steps", "2")
    assert (ck / "checkpoint.pt.prev").exists()  # step 1's, kept until step 2's was complete
    data = (ck / "checkpoint.pt").read_bytes()
    (ck / "checkpoint.pt").write_bytes(data[:len(data) // 2])  # truncated
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--checkpoint-dir", str(ck), "--resume")
    assert rc == 0, err
    assert "resuming from the checkpoint before it" in caplog.text
    assert json.loads((tmp_path / "out" / "finetune_full.json").read_text())["resumed_at_steps"] == [1]
    (ck / "checkpoint.pt").write_bytes(b"junk")
    (ck / "checkpoint.pt.prev").write_bytes(b"junk")
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--checkpoint-dir", str(ck), "--resume")
    refused_before_training(rc, stdout, err, "neither checkpoint can be read")


def test_a_truncated_model_file_is_a_clear_error(tiny_ckpt, task, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, stdout, err = run(["finetune", "--model", str(broken), "--train", task[0], "--dev", task[1],
                           "--max-length", "12", "--no-progress", "--out", str(tmp_path / "o")], capsys)
    refused_before_training(rc, stdout, err, "cannot load a sequence classifier")


def test_ctrl_c_stops_cleanly_and_names_the_checkpoint(tiny_ckpt, task, tmp_path, capsys):
    from autofreeze_ext.training.parts import Part

    class CtrlC(Part):
        def after_step(self, run, res):
            if run.prog.step == 2:
                raise KeyboardInterrupt

    ck = tmp_path / "ck"
    rc = __import__("autofreeze_ext.cli", fromlist=["main"]).main(
        ["finetune", "--mode", "full", "--model", tiny_ckpt, "--train", task[0], "--dev", task[1], "--epochs", "1",
         "--batch-size", "8", "--max-length", "12", "--no-progress", "--no-plot", "--out", str(tmp_path / "o"),
         "--checkpoint-dir", str(ck), "--checkpoint-every", "1"], parts=[CtrlC()])
    err = capsys.readouterr().err
    assert rc == 130 and f"interrupted; the last checkpoint is in {ck}" in err and "Traceback" not in err, err
    assert (ck / "checkpoint.pt").exists()


def test_a_real_sigint_stops_cleanly_and_the_run_resumes(tiny_ckpt, task, tmp_path):
    """Ctrl-C as a terminal sends it: SIGINT to the CLI process while it trains and writes a
    checkpoint every step. Exit 130 naming the checkpoint, no traceback; the checkpoint it left
    is whole (a write the signal cut short leaves the previous one) and --resume finishes."""
    import signal
    import subprocess
    import sys
    import time

    ck = tmp_path / "ck"
    cmd = [sys.executable, "-m", "autofreeze_ext.cli", "finetune", "--mode", "full", "--model", tiny_ckpt,
           "--train", task[0], "--dev", task[1], "--epochs", "40", "--batch-size", "8", "--max-length", "12",
           "--no-progress", "--no-plot", "--out", str(tmp_path / "o"), "--checkpoint-dir", str(ck),
           "--checkpoint-every", "1", "--threads", "1"]
    # Ctrl-C reaches the run even when this suite was started with SIGINT ignored (a background
    # job): the child starts with the default disposition, so Python installs its handler
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not (ck / "checkpoint.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # a few more steps and checkpoint writes
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (out, err)
    assert f"interrupted; the last checkpoint is in {ck}" in err and "Traceback" not in err, err
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0 and "starting fresh" not in done.stderr, done.stderr
    report = __import__("json").loads((tmp_path / "o" / "finetune_full.json").read_text())
    assert report["resumed_at_steps"] and report["resumed_at_steps"][0] > 0
    assert report["steps"] == 40 * report["steps_per_epoch"]


def test_a_cache_folder_in_use_by_another_run_is_refused(tiny_ckpt, task, tmp_path, capsys):
    """Two runs on one --cache-dir would read each other's records: the second is refused while
    the first holds the folder, and may use it once the first is gone (a crash releases it too)."""
    from autofreeze_ext.cache import ActivationCache

    other = ActivationCache(str(tmp_path / "c" / "activations"), memory_budget=0, fingerprint="another run")
    rc, stdout, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--mode", "static:2+cache", "--cache-dir",
                               str(tmp_path / "c"))
    refused_before_training(rc, stdout, err, "is in use by process")
    other.close()
    rc, _, err = finetune(tiny_ckpt, task, tmp_path, capsys, "--mode", "static:2+cache", "--cache-dir",
                          str(tmp_path / "c"))
    assert rc == 0, err


def test_two_trainers_on_one_cache_dir_each_get_a_folder(tmp_path):
    pytest.importorskip("transformers")
    from autofreeze_ext.cache import ActivationCache
    from test_hf_trainer import losses_of, make

    other = ActivationCache(str(tmp_path / "shared"), memory_budget=0, fingerprint="another run")
    trainer = make(tmp_path / "t", cache=True, epochs=4, cache_dir=str(tmp_path / "shared"), cache_memory="0")
    trainer.train()
    assert trainer.cache_counters["hits_disk"] > 0  # it cached on disk, in a folder of its own
    assert [p.name.startswith("run-") for p in (tmp_path / "shared").iterdir() if p.is_dir()] == [True]
    other.close()
    alone = make(tmp_path / "a", cache=True, epochs=4, cache_dir=str(tmp_path / "own"), cache_memory="0")
    alone.train()  # the same run with a folder to itself: the same losses, bit for bit
    assert losses_of(trainer) == losses_of(alone) and alone.cache_counters["hits_disk"] > 0


def test_parse_errors_name_the_line_and_the_separator(tmp_path):
    from autofreeze_ext.tasks import DataError, load_task

    bad = tmp_path / "t.jsonl"
    bad.write_text('{"sentence": "good", "label": 1}\n{"sentence": "bad" "label": 0}\n')
    with pytest.raises(DataError, match=r"t\.jsonl:2: cannot read it as JSONL"):
        load_task(str(bad))
    semi = tmp_path / "s.csv"
    semi.write_text("sentence;label\ngood;1\nbad;0\n")
    with pytest.raises(DataError, match="looks separated by semicolons; TSV needs tabs and CSV commas"):
        load_task(str(semi))
    commas = tmp_path / "c.tsv"
    commas.write_text("sentence,label\ngood,1\n")
    with pytest.raises(DataError, match=r"separated by commas \(name it \.csv or pass --format csv\)"):
        load_task(str(commas))


def test_the_trainer_callback_stops_a_diverging_run(tmp_path):
    transformers = pytest.importorskip("transformers")
    from autofreeze_ext.integrations import AutoFreezeCallback
    from autofreeze_ext.training.parts import TrainingDiverged
    from models import tiny_bert
    from test_hf_callback import DS

    args = transformers.TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, num_train_epochs=2,
                                          learning_rate=float("inf"), logging_steps=1, report_to=[], use_cpu=True,
                                          save_strategy="no", disable_tqdm=True)
    trainer = transformers.Trainer(model=tiny_bert(), args=args, train_dataset=DS(),
                                   callbacks=[AutoFreezeCallback("gradient")])
    with pytest.raises(TrainingDiverged, match="training diverged by step"):
        trainer.train()
    assert trainer.state.global_step < 12  # it stopped, not ran to the end


def test_a_ctrl_c_during_a_checkpoint_write_is_raised_once_the_checkpoint_is_whole(tmp_path):
    """SIGINT inside torch.save to a file object aborted the process (torch's writer wrote to
    the closed file from a destructor: the real-SIGINT test caught it once in several runs).
    The write now finishes, the checkpoint loads, and the interrupt comes right after."""
    import signal

    import torch

    from autofreeze_ext.training.checkpoint import VERSION, load_checkpoint, save_checkpoint

    path = str(tmp_path / "checkpoint.pt")
    big = {"w": torch.zeros(256, 1024)}

    class Interrupting(dict):  # pickled by torch.save: the signal arrives mid-write
        def __reduce__(self):
            os.kill(os.getpid(), signal.SIGINT)
            return dict, (dict(self),)

    # Python's own Ctrl-C handler, also when this suite was started with SIGINT ignored
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(path, {"a": Interrupting(big), "b": big})
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler it found, restored
    finally:
        signal.signal(signal.SIGINT, outer)
    state = load_checkpoint(path)
    assert state["version"] == VERSION and state["a"]["w"].shape == (256, 1024)


def test_a_resumed_runs_cache_totals_add_the_checkpointed_counts():
    """cache_totals: the counts a checkpoint kept plus this process's, the disk tier's nested
    stats too, the derived rates recomputed (not summed); only rank 0 (which writes the
    checkpoints) adds them."""
    from types import SimpleNamespace

    from autofreeze_ext.training.report import cache_totals

    def counts(hits, misses, puts, reads):
        return {"hits_ram": 0, "hits_disk": hits, "misses": misses, "puts_ram": 0, "puts_disk": puts,
                "bytes_put": 10 * puts, "hit_rate": hits / (hits + misses), "bytes_per_row": 10.0,
                "disk": {"reads_ok": reads, "bytes_read": 10 * reads}}

    before = {"counters": counts(6, 2, 2, 6), "decisions": [{"depth": 1}], "writes_skipped": 3}
    cache = SimpleNamespace(counters=lambda: counts(30, 10, 10, 30))
    runner = SimpleNamespace(decisions=[{"depth": 2}], writes_skipped=4)

    def totals(rank):
        return cache_totals(SimpleNamespace(state={"cache_counts": before}, cache=cache, runner=runner,
                                            ctx=SimpleNamespace(rank=rank)))
    t = totals(0)
    c = t["counters"]
    assert (c["hits_disk"], c["misses"], c["puts_disk"], c["disk"]["reads_ok"], c["disk"]["bytes_read"]) == (
        36, 12, 12, 36, 360)
    assert c["hit_rate"] == 36 / 48 and c["bytes_per_row"] == 10.0
    assert t["decisions"] == [{"depth": 1}, {"depth": 2}] and t["writes_skipped"] == 7
    assert totals(1)["counters"]["hits_disk"] == 30  # another rank: its own process only


def test_the_cache_fingerprint_names_the_files_not_the_spelling(tmp_path, monkeypatch):
    """A resume through a link or from another folder reuses the disk tier: the fingerprint is
    the files' real paths (it used abspath, so a link gave a cold cache)."""
    import torch

    from autofreeze_ext.parallel.context import DistContext
    from autofreeze_ext.training.build import _make_cache
    from autofreeze_ext.training.config import FinetuneConfig

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.tsv").write_text("sentence\tlabel\na\t0\n")
    os.symlink(tmp_path / "data", tmp_path / "link")
    prints = []
    for cwd, train in ((tmp_path, "data/train.tsv"), (tmp_path / "data", "train.tsv"), (tmp_path, "link/train.tsv")):
        monkeypatch.chdir(cwd)
        cfg = FinetuneConfig()
        cfg.data.train = train
        cache = _make_cache(cfg, "run0", str(tmp_path / "link"), DistContext(device=torch.device("cpu")))
        prints.append(cache.fingerprint)
        cache.close()
    assert prints[0] == prints[1] == prints[2]
    cfg.data.train = str(tmp_path / "link")  # another file
    assert _make_cache(cfg, "run0", str(tmp_path / "link"), DistContext(device=torch.device("cpu"))).fingerprint != prints[0]
