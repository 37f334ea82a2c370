"""Models. Each `model=` option in conf/model/ names a class here; every class takes the data's
`input_shape` and `num_outputs` (filled in from the dataset) plus its own options from config."""


def build(config, input_shape, num_outputs: int, target_scale: tuple[float, float] | None = None):
    """The model `config` declares for this data; with `target_scale` (the training targets' mean and
    standard deviation), its outputs scaled to the target's units (target_scale.py)."""
    from hydra.utils import instantiate

    from experiments.models.target_scale import TargetScaled

    model = instantiate(config, input_shape=input_shape, num_outputs=num_outputs)
    return model if target_scale is None else TargetScaled(model, *target_scale)
