"""A network declared in YAML (REFERENCE.md B): layers with only their output sizes, and a forward path.

    inputs: {x: [1, 28, 28]}            # null: the dataset's shape
    layers:
      cv1: {conv2d: [20, 5]}            # torch.nn.LazyConv2d(20, 5): in_channels inferred
      hidden: {linear: 500}
      classifier: {linear: num_outputs} # the data's number of outputs
    forward: x.cv1.relu.flatten.hidden.relu.classifier

Each layer is `name: {kind: arguments}`, the arguments as torch.nn takes them minus the input size
(a value, a list of positional arguments, or a mapping of keyword arguments). Torch's lazy modules
infer the input sizes during one dry run on zeros when the model is built, so a layer that cannot
take its input fails before training, and the model is a plain nn.Module from then on.

The forward is one statement or a list of them, written as Python expressions: `value.step.step`,
`step(value, ...)`, `name = expression` to keep a temporary value; a step is a declared layer (used
twice, its weights are shared) or one of FUNCTIONS (`cat(a, b)` and `add(a, b)` combine values); the
last statement gives the output. It is compiled to a torch.fx graph: the model is a GraphModule whose
forward takes the inputs by name (`print(model.code)` shows it), which torch.export and MLflow need.
"""
import ast
import functools

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import fx, nn

from experiments.errors import ConfigError


class Embedding(nn.Embedding):
    """nn.Embedding on inputs that the data module hands over as floats."""

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        return super().forward(indices.long())


LAYERS = {
    "linear": nn.LazyLinear,
    "conv1d": nn.LazyConv1d,
    "conv2d": nn.LazyConv2d,
    "maxpool2d": nn.MaxPool2d,
    "avgpool2d": nn.AvgPool2d,
    "batchnorm1d": nn.LazyBatchNorm1d,
    "batchnorm2d": nn.LazyBatchNorm2d,
    "dropout": nn.Dropout,
    "embedding": Embedding,  # (number of indices, embedding size): the inputs are indices
}


def softmax(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return x.softmax(dim)


def flatten(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)


def reshape(x: torch.Tensor, *shape: int) -> torch.Tensor:
    """Each sample to `shape`: x.reshape(4, 7, 28)."""
    return x.flatten(1).unflatten(1, shape)


def cat(*values: torch.Tensor, dim: int = 1) -> torch.Tensor:
    return torch.cat(values, dim)


def add(*values: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.add, values)


FUNCTIONS = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid, "gelu": nn.functional.gelu,
             "softmax": softmax, "flatten": flatten, "reshape": reshape, "cat": cat, "add": add}


def build_layer(name: str, spec) -> nn.Module:
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"model.layers.{name}: expected one `kind: arguments` pair like {{linear: 10}}, got {spec!r}")
    ((kind, arguments),) = spec.items()
    if kind not in LAYERS:
        raise ConfigError(f"model.layers.{name}: unknown layer kind {kind!r}; choose one of {', '.join(LAYERS)}")
    args, kwargs = (), {}
    if isinstance(arguments, dict):
        kwargs = arguments
    elif arguments is not None:
        args = tuple(arguments) if isinstance(arguments, list) else (arguments,)
    try:
        return LAYERS[kind](*args, **kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"model.layers.{name}: {kind} {arguments!r}: {error}") from error


class Compiler:
    """Builds the fx graph of the forward statements; `values` maps the names defined so far to nodes."""

    def __init__(self, inputs: list[str], layers: dict):
        self.graph, self.layers = fx.Graph(), layers
        self.values = {name: self.graph.placeholder(name) for name in inputs}

    def statement(self, text: str) -> fx.Node:
        try:
            (node,) = ast.parse(text.strip()).body
        except (SyntaxError, ValueError) as error:
            raise ConfigError(f"model.forward: cannot read {text!r}: {getattr(error, 'msg', 'one statement')}")
        if isinstance(node, ast.Expr):
            return self.expression(node.value, text)
        if not isinstance(node, ast.Assign) or len(node.targets) != 1 or not isinstance(node.targets[0], ast.Name):
            raise ConfigError(f"model.forward: {text!r} is not `expression` or `name = expression`")
        self.values[node.targets[0].id] = self.expression(node.value, text, name=node.targets[0].id)
        return self.values[node.targets[0].id]

    def expression(self, node: ast.expr, text: str, name: str | None = None) -> fx.Node:
        if isinstance(node, ast.Name):
            if node.id not in self.values:
                raise ConfigError(
                    f"model.forward: {text!r} uses {node.id!r}, which is not defined; defined so far: "
                    f"{', '.join(self.values)} (the inputs are named by model.inputs)"
                )
            return self.values[node.id]
        if isinstance(node, ast.Attribute):  # value.step
            return self.apply(node.attr, [self.expression(node.value, text)], [], {}, text, name)
        if isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name)):
            if isinstance(node.func, ast.Attribute):  # value.step(numbers)
                step, values = node.func.attr, [self.expression(node.func.value, text)]
            else:  # step(values, numbers)
                step, values = node.func.id, []
            numbers = []
            for arg in node.args:
                try:
                    numbers.append(ast.literal_eval(arg))
                except ValueError:
                    values.append(self.expression(arg, text))
            try:
                kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
            except ValueError as error:
                raise ConfigError(f"model.forward: {text!r}: a keyword argument of {step} must be a number") from error
            return self.apply(step, values, numbers, kwargs, text, name)
        raise ConfigError(f"model.forward: {text!r}: cannot read {ast.unparse(node)!r}")

    def apply(self, step: str, values: list, numbers: list, kwargs: dict, text: str, name: str | None) -> fx.Node:
        args = (*values, *numbers)
        if step in self.layers:
            return self.graph.create_node("call_module", f"layers.{step}", args, kwargs, name=name)
        if step in FUNCTIONS:
            return self.graph.create_node("call_function", FUNCTIONS[step], args, kwargs, name=name or step)
        raise ConfigError(
            f"model.forward: {text!r}: {step!r} is neither a layer of model.layers ({', '.join(self.layers)}) "
            f"nor a function ({', '.join(FUNCTIONS)})"
        )


def input_shapes(declared: dict[str, list | None], given) -> dict[str, tuple[int, ...]]:
    """Each input's shape per sample: as declared in model.inputs, else the dataset's (`given`: one shape,
    or a tuple of shapes for a dataset with several inputs)."""
    given = list(given) if given and isinstance(given[0], (list, tuple)) else [given]
    if len(given) != len(declared):
        raise ConfigError(
            f"model.inputs names {len(declared)} input(s) ({', '.join(declared)}), the data gives "
            f"{len(given)} of shape {', '.join(str(tuple(shape)) for shape in given)}"
        )
    shapes = {}
    for (name, shape), data_shape in zip(declared.items(), given):
        if shape is not None and tuple(shape) != tuple(data_shape):
            raise ConfigError(f"model.inputs.{name} is declared {list(shape)}, the data gives {list(data_shape)}")
        shapes[name] = tuple(data_shape)
    return shapes


class DryRun(fx.Interpreter):
    """Runs the graph on zeros: materialises the lazy layers, records each node's output shape per
    sample, and turns a step that cannot take its input into one line naming it and the shapes."""

    def __init__(self, module: fx.GraphModule, specs: dict):
        super().__init__(module)
        self.extra_traceback = False  # our message names the step already
        self.specs, self.shapes = specs, {}

    def run_node(self, node: fx.Node):
        try:
            value = super().run_node(node)
        except (RuntimeError, ValueError, TypeError, IndexError) as error:
            args, _ = self.fetch_args_kwargs_from_env(node)
            shapes = ", ".join(str(tuple(a.shape[1:])) for a in args if isinstance(a, torch.Tensor))
            layer = str(node.target).removeprefix("layers.")
            where = f"model.layers.{layer} {self.specs[layer]}" if node.op == "call_module" else (
                f"model.forward: {node.name}")
            raise ConfigError(
                f"{where} cannot take input shape {shapes} (per sample): {str(error).splitlines()[0]}"
            ) from error
        if isinstance(value, torch.Tensor):
            self.shapes[node.name] = tuple(value.shape[1:])
        return value


def Layers(
    input_shape: tuple,
    num_outputs: int,
    inputs: dict[str, list | None],
    layers: dict,
    forward: str | list[str],
) -> fx.GraphModule:
    """The network that `layers` and `forward` declare (see the module docstring), its per-sample output
    shapes in `.shapes`. input_shape and num_outputs come from the dataset."""
    input_shape, inputs, layers, forward = (OmegaConf.to_container(x) if isinstance(x, (DictConfig, ListConfig))
                                            else x for x in (input_shape, inputs, layers, forward))
    shapes = input_shapes(inputs, input_shape)
    layers = {name: _with_outputs(spec, num_outputs) for name, spec in layers.items()}
    root = nn.Module()
    root.layers = nn.ModuleDict({name: build_layer(name, spec) for name, spec in layers.items()})
    compiler = Compiler(list(inputs), layers)
    for statement in [forward] if isinstance(forward, str) else forward:
        output = compiler.statement(statement)
    compiler.graph.output(output)
    unused = set(layers) - {str(node.target).removeprefix("layers.") for node in compiler.graph.nodes}
    if unused:
        raise ConfigError(f"model.layers: {', '.join(sorted(unused))} declared but not used in model.forward")
    model = fx.GraphModule(root, compiler.graph, class_name="Layers")
    model.eval()  # batch norm and dropout as in prediction, on a batch of 2 zeros
    with torch.no_grad():
        dry_run = DryRun(model, layers)
        dry_run.run(*(torch.zeros(2, *shape) for shape in shapes.values()))
    model.shapes = dry_run.shapes
    return model.train()


def _with_outputs(spec, num_outputs: int):
    """Replace the word `num_outputs` in a layer's arguments by the data's number of outputs."""
    if isinstance(spec, dict):
        return {key: _with_outputs(value, num_outputs) for key, value in spec.items()}
    if isinstance(spec, list):
        return [_with_outputs(value, num_outputs) for value in spec]
    return num_outputs if spec == "num_outputs" else spec
