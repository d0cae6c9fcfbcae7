"""Datasets: MNIST readers, the book's expansion, and download."""

from convnet.data.mnist import load_data_shared, load_mnist

__all__ = ["load_data_shared", "load_mnist"]
