"""Pythae 0.1.2's VAE trainer with avae's MLPs, batch 100 and data: the external peer of
`avae bench`, run in Pythae's own environment (see BENCH.md). Arguments: images.npy seconds threads.
Prints one JSON line: the training steps taken, the seconds they took and Pythae's version."""

import json
import sys
import tempfile
import time

import numpy as np
import pythae
import torch
from pythae.data.datasets import BaseDataset
from pythae.models import VAE, VAEConfig
from pythae.models.base.base_utils import ModelOutput
from pythae.models.nn import BaseDecoder, BaseEncoder
from pythae.trainers import BaseTrainer, BaseTrainerConfig
from torch import nn


def mlp(sizes):
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class Encoder(BaseEncoder):
    def __init__(self):
        super().__init__()
        self.net = mlp([784, 256, 64, 32, 20])

    def forward(self, x):
        mu, logvar = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
        return ModelOutput(embedding=mu, log_covariance=logvar)


class Decoder(BaseDecoder):
    def __init__(self):
        super().__init__()
        self.net = mlp([10, 32, 64, 256, 784])

    def forward(self, z):
        return ModelOutput(reconstruction=torch.sigmoid(self.net(z)).reshape(z.shape[0], 1, 28, 28))


def main(images: str, seconds: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    data = np.load(images).reshape(-1, 1, 28, 28).astype("float32")
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=10, reconstruction_loss="bce")
    model = VAE(config, encoder=Encoder(), decoder=Decoder())
    with tempfile.TemporaryDirectory() as out:
        settings = BaseTrainerConfig(
            output_dir=out, num_epochs=1, per_device_train_batch_size=100, learning_rate=1e-3, no_cuda=True
        )
        dataset = BaseDataset(torch.from_numpy(data), torch.zeros(len(data)))
        trainer = BaseTrainer(model, train_dataset=dataset, training_config=settings)
        trainer.prepare_training()
        trainer.train_step(1)  # warm-up
        steps, start, epoch = 0, time.perf_counter(), 1
        while time.perf_counter() - start < seconds:
            epoch += 1
            trainer.train_step(epoch)
            steps += len(trainer.train_loader)
        elapsed = time.perf_counter() - start
    return {"steps": steps, "seconds": elapsed, "version": getattr(pythae, "__version__", "0.1.2")}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))))
