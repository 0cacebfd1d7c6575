# A TRL training script's command line (TRL's parser: --field value, bare flags are True).
accelerate launch --num_processes 1 train_grpo.py \
    --model_name_or_path Qwen/Qwen2.5-0.5B-Instruct \
    --dataset_name trl-lib/DeepMath-103K \
    --loss_type grpo \
    --beta 0.04 \
    --num_iterations 2 \
    --num_generations 8 \
    --per_device_train_batch_size 8 \
    --max_completion_length 1024 \
    --learning_rate 1e-6 \
    --bf16 \
    --report_to wandb tensorboard
