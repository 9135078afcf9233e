# --mode-goal time on 2 DDP ranks (gloo, this 2-core CPU): the same AutoFreeze run with a fixed
# global batch of 32 and with the batch allowed to grow to 128 as freezing frees activation
# memory, with and without the activation cache; one session, back to back.
set -x
D=/work/shared/data/sst2
OUT=${OUT:-/work/results/ddp_time}
A="--train $D/train.tsv --dev $D/dev.tsv --train-samples 1600 --epochs 3 --batch-size 32 --max-length 64 --no-progress --no-plot --threads 1 --evals-per-epoch 1"
for m in autofreeze autofreeze+cache; do
  python -m torch.distributed.run --standalone --nproc_per_node 2 -m autofreeze_ext.cli finetune --mode $m $A \
    --out $OUT/fixed
  python -m torch.distributed.run --standalone --nproc_per_node 2 -m autofreeze_ext.cli finetune --mode $m $A \
    --mode-goal time --max-batch 128 --out $OUT/time
done
# The packing alone, at a fixed frozen depth (static:5 with the cache): the batch may fill the
# activation memory full fine-tuning's batch of 32 needed on a worker at the start (measured in
# the autofreeze run above: 231,411,972 bytes per worker)
for goal in "" "--mode-goal time --max-batch 128 --max-activation-memory 231411972"; do
  python -m torch.distributed.run --standalone --nproc_per_node 2 -m autofreeze_ext.cli finetune --mode static:5+cache $A \
    $goal --out $OUT/static5${goal:+_time}
done
# The default --min-packing-gain 0.05 (added after the runs above, which grew whenever the
# predicted epoch was shorter at all): the same static:5 job keeps its batch of 32
python -m torch.distributed.run --standalone --nproc_per_node 2 -m autofreeze_ext.cli finetune --mode static:5+cache $A \
  --mode-goal time --max-batch 128 --max-activation-memory 231411972 --out $OUT/static5_time_default
