"""Training: the published loss, AU metrics, the epoch loop with exactly resumable checkpoints,
and analysis of what a model learned."""
from .analysis import au_relations, linear_probe, pooled_tokens
from .checkpoints import load_training_checkpoint, save_checkpoint
from .loop import au_targets, evaluate, fit, model_targets, train_epoch
from .losses import MEFLLoss, WeightedAsymmetricLoss, au_class_weights, relation_loss
from .metrics import AUMetrics

__all__ = ["AUMetrics", "MEFLLoss", "WeightedAsymmetricLoss", "au_class_weights", "au_relations",
           "au_targets", "evaluate", "fit", "linear_probe", "load_training_checkpoint",
           "model_targets", "pooled_tokens", "relation_loss", "save_checkpoint", "train_epoch"]
