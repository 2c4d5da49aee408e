"""Data: image decoding, paper preprocessing, ImageNet-layout folders, the built-in data set."""
