"""Models. Each `model=` option in conf/model/ names a class here; every class takes the data's
`input_shape` and `num_outputs` (filled in from the dataset) plus its own options from config."""
