"""Datasets. Each `data=` option in conf/data/ names a builder here that returns a TensorDataModule."""
