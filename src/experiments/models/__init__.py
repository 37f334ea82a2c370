"""Models. Each `model=` option in conf/model/ names a class here; every class takes the data's
`input_shape` and `num_outputs` (filled in from the dataset) plus its own options from config."""


def build(config, input_shape, num_outputs: int, target_scale: tuple[float, float] | None = None):
    """The model `config` declares for this data; with `target_scale` (the training targets' mean and
    standard deviation), its outputs scaled to the target's units (target_scale.py)."""
    from hydra.utils import instantiate

    from experiments.errors import ConfigError
    from experiments.models.target_scale import TargetScaled

    # several inputs (data=mnist_halves): only a model declaring them (models/layers.py, its `inputs`) takes them
    if any(isinstance(shape, tuple) for shape in input_shape) and "inputs" not in config:
        raise ConfigError(f"model {config._target_.rsplit('.', 1)[-1]} takes one input, but the data gives "
                          f"{len(input_shape)} ({', '.join(map(str, input_shape))}); use a model declared with as many "
                          "inputs, such as model=halves_layers")
    model = instantiate(config, input_shape=input_shape, num_outputs=num_outputs)
    return model if target_scale is None else TargetScaled(model, *target_scale)
