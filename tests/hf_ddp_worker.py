"""AutoFreezeTrainer in one process of a ``torchrun`` job (or alone), for tests/test_hf_trainer.py.

    torchrun --nproc_per_node 2 tests/hf_ddp_worker.py OUT             # 2 ranks, per-device batch 8, cache
    torchrun --nproc_per_node 2 tests/hf_ddp_worker.py OUT --no-cache  # the Trainer's own DDP, freezing only
    ... OUT --save-steps 5                      # checkpoints in OUT/trainer/checkpoint-*
    ... OUT --resume CKPT                       # resumed from a checkpoint folder

Both runs take the same batches (the sampler the cached run picks under 2 ranks).

Writes OUT/rankR.pt: parameters, freezing decisions, cache counters, losses.
"""
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from autofreeze_ext.integrations.hf_ddp import RankStableSampler  # noqa: E402
from autofreeze_ext.integrations.hf_trainer import AutoFreezeTrainer  # noqa: E402
from models import tiny_bert  # noqa: E402
from test_hf_callback import DS  # noqa: E402

WORLD, BATCH = 2, 8


class OnRankStableBatches(AutoFreezeTrainer):
    """Without the cache too, the batches the cached trainer takes under several processes."""

    def _get_train_sampler(self, train_dataset=None):
        return RankStableSampler(len(self.train_dataset), WORLD, BATCH, self.args.seed)


def main(out: str, cache: bool, save_steps: int = 0, resume: str = None) -> None:
    torch.set_num_threads(1)
    model = tiny_bert(num_layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    args = transformers.TrainingArguments(
        output_dir=os.path.join(out, "trainer"), per_device_train_batch_size=BATCH, num_train_epochs=4,
        learning_rate=1e-3, logging_steps=1, save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500, report_to=[], use_cpu=True, seed=0, disable_tqdm=True)
    cls = AutoFreezeTrainer if cache else OnRankStableBatches
    trainer = cls(model=model, args=args, train_dataset=DS(), cache=cache, cache_dir=os.path.join(out, "cache"),
                  cost_model=False, policy="gradient")
    trainer.train(resume_from_checkpoint=resume)
    ctl = trainer.autofreeze.controller
    torch.save({"params": {k: v.detach().clone() for k, v in model.named_parameters()},
                "freezes": [(h["step"], h["to"]) for h in ctl.history if h["event"] == "freeze"],
                "cache": trainer.cache_counters, "allreduce": trainer.allreduce_bytes, "world": trainer.args.world_size,
                "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]},
               os.path.join(out, f"rank{trainer.args.process_index}.pt"))


if __name__ == "__main__":
    argv = sys.argv[2:]
    opt = {k: argv[argv.index(k) + 1] for k in ("--save-steps", "--resume") if k in argv}
    main(sys.argv[1], "--no-cache" not in argv, int(opt.get("--save-steps", 0)), opt.get("--resume"))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    os._exit(0)  # as the CLI's workers leave: gloo's threads may abort interpreter finalisation
