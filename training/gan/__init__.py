"""Class-conditional GAN for sparse classes: model, training, gated synthesis, evaluation."""

from latentsight.training.gan.model import ConditionalGAN, GANConfig
from latentsight.training.gan.train import GANTrainConfig, load_gan, save_gan, train_gan

__all__ = ["ConditionalGAN", "GANConfig", "GANTrainConfig", "load_gan", "save_gan", "train_gan"]
