"""Training: the published loss, AU metrics, the epoch loop with exactly resumable checkpoints,
and analysis of what a model learned."""
from .analysis import au_relations
from .baselines import ProbeResult, TokenMLP, face_tokens, ridge_probe, token_mlp_probe
from .checkpoints import load_training_checkpoint, save_checkpoint
from .distributed import (ShardedBatchSampler, close_distributed, distribute_model,
                          global_batch_loss, init_distributed, reduce_metrics, shard_loader,
                          synchronise_norms)
from .loop import au_targets, evaluate, fit, model_targets, predict, train_epoch
from .losses import MEFLLoss, WeightedAsymmetricLoss, au_class_weights, relation_loss
from .metrics import AUMetrics
from .schedule import warmup_cosine_schedule
from .thresholds import calibrate_thresholds, calibrated_metrics

__all__ = ["AUMetrics", "MEFLLoss", "ProbeResult", "ShardedBatchSampler", "TokenMLP",
           "WeightedAsymmetricLoss", "au_class_weights", "au_relations", "au_targets",
           "calibrate_thresholds", "calibrated_metrics", "close_distributed",
           "distribute_model", "evaluate", "face_tokens", "fit", "global_batch_loss",
           "init_distributed", "load_training_checkpoint",
           "model_targets", "predict", "reduce_metrics",
           "relation_loss", "ridge_probe", "save_checkpoint", "shard_loader",
           "synchronise_norms", "token_mlp_probe", "train_epoch",
           "warmup_cosine_schedule"]
