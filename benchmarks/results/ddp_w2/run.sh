set -x
D=/work/shared/data/sst2
A="--train $D/train.tsv --dev $D/dev.tsv --train-samples 1600 --epochs 2 --batch-size 32 --max-length 64 --no-progress --threads 1 --evals-per-epoch 1"
for m in full autofreeze; do
  python -m torch.distributed.run --standalone --nproc_per_node 2 -m autofreeze_ext.cli finetune --mode $m $A --out /work/results/ddp/w2_$m
done
