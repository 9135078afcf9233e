D=/work/shared/data/sst2
A="--train $D/train.tsv --dev $D/dev.tsv --train-samples 1600 --epochs 2 --batch-size 32 --max-length 64 --no-progress --threads 1 --evals-per-epoch 1"
python -m autofreeze_ext.cli launch --nproc 2 finetune --mode autofreeze $A --mode-goal cost --checkpoint-dir /work/results/ddp/ck_cost --checkpoint-every 1000 --out /work/results/ddp/w2_cost
