"""avae: adversarial variational autoencoders (AVAE, VAE, VAE+eps, AVB) with honest evaluation."""

__version__ = "0.1.0"
