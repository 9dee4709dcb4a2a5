"""Convolution composites, the guide's conv examples and ResNet, checked against
hand-written PyTorch modules (torchvision is not used: its module layout is written out
here) on every installed backend that lowers the primitives they need."""

import numpy as np
import pytest
import torch
from torch import nn

import mithril_core as ml
from mithril_core.models import (
    Add,
    BatchNorm2D,
    Convolution1D,
    Convolution2D,
    IOKey,
    Model,
    Operator,
    Relu,
    resnet18,
    resnet34,
    resnet50,
)
from mithril_core.plugins import get_registry
from mithril_core.primitives import AvgPool2D, MaxPool2D

# -- the guide's examples, as written (``...`` gaps filled) ---------------------------


def resnet_block(channels: int, stride: int = 1):
    block = Model()

    # Main path
    block += Convolution2D(channels, kernel_size=3, stride=stride, padding=1)
    block += BatchNorm2D(channels)
    block += Relu()
    block += Convolution2D(channels, kernel_size=3, padding=1)
    block += BatchNorm2D(channels)

    # Shortcut path if needed
    if stride > 1:
        shortcut = Model()
        shortcut += Convolution2D(channels, kernel_size=1, stride=stride)
        shortcut += BatchNorm2D(channels)
        block |= shortcut(input=block.cin, output="shortcut")
        block |= Add()(left="shortcut", right=block.cout, output="res")
    else:
        block |= Add()(left=block.cin, right=block.cout, output="res")

    block += Relu()(input="res")

    return block


class DepthwiseSeparableConv(Operator):
    def __init__(
        self,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        name: str | None = None,
    ):
        super().__init__(name=name)
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding

    def create_model(self):
        model = Model()
        input = IOKey("input")
        in_channels = input.shape[1]

        # Depthwise convolution
        model |= Convolution2D(
            out_channels=in_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            groups=in_channels,
            name="depthwise",
        )(input=input, output="depthwise_out")

        # Pointwise convolution
        model |= Convolution2D(
            out_channels=self.out_channels, kernel_size=1, name="pointwise"
        )(input="depthwise_out", output=IOKey("output"))

        return model


# -- hand-written PyTorch references ---------------------------------------------------


class TorchResNetBlock(nn.Module):
    def __init__(self, channels, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = None
        if stride > 1:
            self.shortcut = nn.Sequential(
                nn.Conv2d(channels, channels, 1, stride), nn.BatchNorm2d(channels)
            )

    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        identity = x if self.shortcut is None else self.shortcut(x)
        return torch.relu(identity + out)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class TorchResNet(nn.Module):
    """torchvision.models.resnet.ResNet's layout and module names."""

    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(
                    self.inplanes, planes * block.expansion, 1, stride, bias=False
                ),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_resnet18(num_classes=1000):
    return TorchResNet(BasicBlock, (2, 2, 2, 2), num_classes)


def randomize_batchnorm(module, seed=0):
    """Non-trivial affine parameters and running statistics in every BatchNorm."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, nn.BatchNorm2d):
                shape = bn.running_mean.shape
                bn.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                bn.bias.copy_(torch.rand(shape, generator=generator) - 0.5)
                bn.running_mean.copy_(torch.rand(shape, generator=generator) - 0.5)
                bn.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
    return module


# -- helpers ---------------------------------------------------------------------------


def make_backend(name, dtype="float32"):
    return ml.backend(name, dtype=getattr(ml, dtype))


# Backends whose float64 convolution is not float64-accurate: tested in float32.
FLOAT64_GAPS = {"mlx": "mx.conv_general computes float64 in float32 precision"}


def widest_float(name):
    supported = get_registry().backend_class(name).supported_dtypes
    if name in FLOAT64_GAPS or "float64" not in supported:
        return "float32"
    return "float64"


def needed_ops(model, shapes, **options):
    """Op names a model's compiled graph calls (compiled on NumPy)."""
    pm = ml.compile(model, make_backend("numpy"), shapes=shapes, jit=False, **options)
    return {node.op for node in pm.graph.nodes}


def skip_without_lowerings(backend_name, ops):
    missing = sorted(ops - set(get_registry().lowerings(backend_name)))
    if missing:
        pytest.skip(f"{backend_name} has no lowering for {missing}")


def to_numpy(pm, value):
    return np.array(pm.backend.to_numpy(value), dtype=np.float64)


def tolerance(dtype):
    return {"rtol": 1e-6, "atol": 1e-8} if dtype == "float64" else {"atol": 1e-4}


RNG = np.random.default_rng(0)


# -- Convolution composites ------------------------------------------------------------


def test_convolution2d_terminals_and_shapes():
    model = Model()
    model |= Convolution2D(6, kernel_size=(3, 2), stride=2, padding=1, name="conv")(
        input="input", output=IOKey("output")
    )
    pm = ml.compile(
        model,
        make_backend("numpy"),
        shapes={"input": [2, 4, 9, 8]},
        data_keys={"input"},
    )
    assert pm.shapes["conv_weight"] == [6, 4, 3, 2]
    assert pm.shapes["conv_bias"] == [6]
    assert pm.shapes["output"] == [2, 6, 5, 5]
    assert set(pm.trainable_keys) == {"conv_weight", "conv_bias"}


def test_convolution_without_bias_has_no_bias_key():
    model = Model()
    model |= Convolution1D(5, kernel_size=3, use_bias=False, name="conv")(
        input="input", output=IOKey("output")
    )
    pm = ml.compile(
        model, make_backend("numpy"), shapes={"input": [2, 4, 10]}, data_keys={"input"}
    )
    assert set(pm.trainable_keys) == {"conv_weight"}
    assert pm.shapes["output"] == [2, 5, 8]


CONV2D_CASES = {
    "plain": {"kernel_size": 3},
    "stride-padding": {"kernel_size": 3, "stride": 2, "padding": 1},
    "rect-dilation": {"kernel_size": (3, 2), "padding": (2, 1), "dilation": (2, 1)},
    "groups": {"kernel_size": 3, "padding": "same", "groups": 2},
    "valid-nobias": {"kernel_size": 2, "padding": "valid", "use_bias": False},
}


def check_against_torch(backend_name, dtype, model, shapes, ref, param_map, seed=1):
    """Outputs and gradients (params and input) of ``model`` vs the float64 PyTorch
    module ``ref`` (in its current mode), with ``ref``'s parameters set to ours
    (``param_map``: our key -> ref's parameter name). Returns the outputs."""
    skip_without_lowerings(backend_name, needed_ops(model, shapes))
    backend = make_backend(backend_name, dtype)
    # The input compiled as a trainable key: its gradient is checked too.
    pm = ml.compile(model, backend, shapes=shapes, jit=False)
    params = pm.randomize_params(seed=seed)
    x = RNG.standard_normal(shapes["input"])
    params["input"] = backend.array(x)
    ref = ref.double()
    tensors = {**dict(ref.named_parameters()), **dict(ref.named_buffers())}
    for key, name in param_map.items():
        if name.endswith(("weight", "bias")) and "bn" in key:  # not trivial 1 and 0
            low = 0.5 if name.endswith("weight") else -0.5
            params[key] = backend.array(RNG.uniform(low, low + 1, pm.shapes[key]))
        with torch.no_grad():
            tensors[name].copy_(torch.from_numpy(to_numpy(pm, params[key])))
    tx = torch.tensor(x, requires_grad=True)
    expected = ref(tx)
    grad_out = RNG.standard_normal(tuple(expected.shape))
    expected.backward(torch.from_numpy(grad_out))
    outputs, grads = pm.evaluate(
        params, output_gradients={"output": backend.array(grad_out)}
    )
    tol = tolerance(dtype)
    np.testing.assert_allclose(
        to_numpy(pm, outputs["output"]), expected.detach().numpy(), **tol
    )
    np.testing.assert_allclose(to_numpy(pm, grads["input"]), tx.grad.numpy(), **tol)
    for key, name in param_map.items():
        ref_param = tensors[name]
        if ref_param.requires_grad:
            np.testing.assert_allclose(
                to_numpy(pm, grads[key]), ref_param.grad.numpy(), **tol, err_msg=key
            )
    return {k: to_numpy(pm, v) for k, v in outputs.items()}


@pytest.mark.parametrize("case", list(CONV2D_CASES))
def test_convolution2d_outputs_and_gradients_match_torch(backend_name, case):
    kwargs = dict(CONV2D_CASES[case])
    model = Model()
    model |= Convolution2D(6, name="conv", **kwargs)(
        input="input", output=IOKey("output")
    )
    use_bias = kwargs.pop("use_bias", True)
    ref = nn.Conv2d(4, 6, **kwargs, bias=use_bias)
    param_map = {"conv_weight": "weight"}
    if use_bias:
        param_map["conv_bias"] = "bias"
    check_against_torch(
        backend_name,
        widest_float(backend_name),
        model,
        {"input": [2, 4, 9, 8]},
        ref,
        param_map,
    )


def test_convolution1d_matches_torch(backend_name):
    dtype = widest_float(backend_name)
    model = Model()
    model |= Convolution1D(5, kernel_size=3, stride=2, padding=1, name="conv")(
        input="input", output=IOKey("output")
    )
    shapes = {"input": [2, 3, 11]}
    skip_without_lowerings(backend_name, needed_ops(model, shapes))
    backend = make_backend(backend_name, dtype)
    pm = ml.compile(model, backend, shapes=shapes, data_keys={"input"}, jit=False)
    params = pm.randomize_params()
    x = RNG.standard_normal((2, 3, 11))
    ref = nn.Conv1d(3, 5, 3, 2, 1).double()
    with torch.no_grad():
        ref.weight.copy_(torch.from_numpy(to_numpy(pm, params["conv_weight"])))
        ref.bias.copy_(torch.from_numpy(to_numpy(pm, params["conv_bias"])))
    out = pm.evaluate(params, {"input": backend.array(x)})["output"]
    expected = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(to_numpy(pm, out), expected, **tolerance(dtype))


# -- pooling and BatchNorm2D gradients (training mode) ---------------------------------

LAYER_CASES = {
    "maxpool": (
        lambda: MaxPool2D(kernel_size=3, stride=2, padding=1),
        lambda: nn.MaxPool2d(3, 2, 1),
    ),
    "avgpool": (lambda: AvgPool2D(kernel_size=2), lambda: nn.AvgPool2d(2)),
    "batchnorm": (lambda: BatchNorm2D(4, name="bn"), lambda: nn.BatchNorm2d(4)),
}


@pytest.mark.parametrize("case", list(LAYER_CASES))
def test_layer_gradients_match_torch_autograd(backend_name, case):
    make_ml, make_torch = LAYER_CASES[case]
    model = Model()
    model |= make_ml()(input="input", output=IOKey("output"))
    ref = make_torch().train()
    param_map = {}
    if case == "batchnorm":
        param_map = {
            "bn_weight": "weight",
            "bn_bias": "bias",
            "bn_running_mean": "running_mean",
            "bn_running_var": "running_var",
        }
    outputs = check_against_torch(
        backend_name,
        widest_float(backend_name),
        model,
        {"input": [2, 4, 7, 6]},
        ref,
        param_map,
    )
    if case == "batchnorm":  # training mode returns the updated running statistics
        tol = tolerance(widest_float(backend_name))
        for name in ("running_mean", "running_var"):
            np.testing.assert_allclose(
                outputs[f"bn_{name}_updated"], getattr(ref, name).numpy(), **tol
            )


# -- the guide's resnet_block and DepthwiseSeparableConv -------------------------------


def copy_params(pm, ref, mapping):
    """Params for ``pm`` from the float64 module ``ref``'s state dict (our key -> its
    key), in the backend's dtype."""
    state = ref.state_dict()
    return {key: pm.backend.array(state[name].numpy()) for key, name in mapping.items()}


def block_mapping(pm, ref):
    """Our keys (in compile order) matched to ``ref``'s state-dict keys: both follow
    the order in which the layers are declared."""
    ours = [k for k in pm.input_keys if k != "input"]
    theirs = [k for k in ref.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs)
    mapping = {}
    for key, name in zip(sorted(ours, key=layer_order(pm)), theirs, strict=True):
        assert key.rsplit("_", 1)[-1] == name.rsplit(".", 1)[-1] or (
            key.endswith(("running_mean", "running_var"))
            and name.endswith(("running_mean", "running_var"))
        ), (key, name)
        mapping[key] = name
    return mapping


def layer_order(pm):
    suffixes = ["weight", "bias", "running_mean", "running_var"]
    order = {k: i for i, k in enumerate(pm.input_keys)}

    def key(name):
        base = next(name[: -len(s) - 1] for s in suffixes if name.endswith(s))
        layer = min(order[k] for k in pm.input_keys if k.startswith(base + "_"))
        return (layer, next(i for i, s in enumerate(suffixes) if name.endswith(s)))

    return key


@pytest.mark.parametrize("stride", [1, 2])
def test_guide_resnet_block_matches_torch(backend_name, stride):
    model = Model()
    model |= resnet_block(4, stride)(input="input", output=IOKey("output"))
    shapes = {"input": [2, 4, 8, 8]}
    skip_without_lowerings(backend_name, needed_ops(model, shapes, inference=True))
    backend = make_backend(backend_name, widest_float(backend_name))
    pm = ml.compile(
        model, backend, shapes=shapes, data_keys={"input"}, inference=True, jit=False
    )
    ref = randomize_batchnorm(TorchResNetBlock(4, stride)).double().eval()
    params = copy_params(pm, ref, block_mapping(pm, ref))
    x = RNG.standard_normal((2, 4, 8, 8))
    out = pm.evaluate(params, {"input": backend.array(x)})["output"]
    expected = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(
        to_numpy(pm, out), expected, **tolerance(widest_float(backend_name))
    )


def test_guide_resnet_block_trains_like_torch(backend_name):
    model = Model()
    model |= resnet_block(4, 2)(input="input", output=IOKey("output"))
    shapes = {"input": [2, 4, 8, 8]}
    skip_without_lowerings(backend_name, needed_ops(model, shapes))
    dtype = widest_float(backend_name)
    backend = make_backend(backend_name, dtype)
    pm = ml.compile(model, backend, shapes=shapes, data_keys={"input"}, jit=False)
    ref = randomize_batchnorm(TorchResNetBlock(4, 2)).double().train()
    mapping = block_mapping(pm, ref)
    params = copy_params(pm, ref, mapping)
    x = RNG.standard_normal((2, 4, 8, 8))
    expected = ref(torch.from_numpy(x))
    grad_out = RNG.standard_normal(tuple(expected.shape))
    expected.backward(torch.from_numpy(grad_out))
    outputs, grads = pm.evaluate(
        params,
        {"input": backend.array(x)},
        output_gradients={"output": backend.array(grad_out)},
    )
    tol = tolerance(dtype)
    np.testing.assert_allclose(
        to_numpy(pm, outputs["output"]), expected.detach().numpy(), **tol
    )
    named = dict(ref.named_parameters())
    state = ref.state_dict()
    for key, name in mapping.items():
        if name in named:
            np.testing.assert_allclose(
                to_numpy(pm, grads[key]), named[name].grad.numpy(), **tol, err_msg=key
            )
        else:
            np.testing.assert_allclose(
                to_numpy(pm, outputs[f"{key}_updated"]), state[name].numpy(), **tol
            )


def test_guide_depthwise_separable_conv_matches_torch(backend_name):
    model = Model()
    model |= DepthwiseSeparableConv(8, kernel_size=3, stride=2, padding=1, name="ds")(
        input="input", output=IOKey("output")
    )
    shapes = {"input": [2, 4, 9, 9]}
    ref = nn.Sequential()
    ref.add_module("depthwise", nn.Conv2d(4, 4, 3, 2, 1, groups=4))
    ref.add_module("pointwise", nn.Conv2d(4, 8, 1))
    param_map = {
        f"ds_{layer}_{kind}": f"{layer}.{kind}"
        for layer in ("depthwise", "pointwise")
        for kind in ("weight", "bias")
    }
    check_against_torch(
        backend_name, widest_float(backend_name), model, shapes, ref, param_map
    )


def test_depthwise_separable_conv_shapes_follow_the_input():
    model = DepthwiseSeparableConv(8, kernel_size=3, padding=1)
    pm = ml.compile(model, make_backend("numpy"), shapes={"input": [1, 6, 5, 5]})
    assert pm.shapes["depthwise_weight"] == [6, 1, 3, 3]
    assert pm.shapes["depthwise_bias"] == [6]
    assert pm.shapes["pointwise_weight"] == [8, 6, 1, 1]
    assert pm.shapes["output"] == [1, 8, 5, 5]


# -- ResNet ----------------------------------------------------------------------------


def test_resnet18_keys_are_torchvision_keys():
    pm = ml.compile(
        resnet18(num_classes=10),
        make_backend("numpy"),
        shapes={"input": [1, 3, 32, 32]},
        data_keys={"input"},
        inference=True,
    )
    ref = torch_resnet18(num_classes=10)
    expected = {
        k.replace(".", "_"): list(v.shape)
        for k, v in ref.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    ours = {k: pm.shapes[k] for k in (*pm.trainable_keys, *pm.state_keys)}
    assert ours == expected
    assert set(pm.state_keys) == {k for k in expected if "running" in k}
    assert pm.data_keys == ("input",) and pm.output_keys == ("output",)
    for key in ("conv1_weight", "bn1_running_mean", "layer1_0_conv1_weight",
                "layer2_0_downsample_0_weight", "layer2_0_downsample_1_running_var",
                "fc_weight", "fc_bias"):  # fmt: skip
        assert key in ours


@pytest.mark.parametrize(
    ("factory", "block", "layers"),
    [(resnet34, BasicBlock, (3, 4, 6, 3)), (resnet50, Bottleneck, (3, 4, 6, 3))],
)
def test_resnet34_50_keys_are_torchvision_keys(factory, block, layers):
    pm = ml.compile(
        factory(num_classes=7),
        make_backend("numpy"),
        shapes={"input": [1, 3, 32, 32]},
        data_keys={"input"},
        inference=True,
    )
    ref = TorchResNet(block, layers, num_classes=7)
    expected = {
        k.replace(".", "_"): list(v.shape)
        for k, v in ref.state_dict().items()
        if not k.endswith("num_batches_tracked")
    }
    assert {k: pm.shapes[k] for k in (*pm.trainable_keys, *pm.state_keys)} == expected


def test_resnet18_matches_torch_eval(backend_name):
    shapes = {"input": [2, 3, 32, 32]}
    skip_without_lowerings(
        backend_name, needed_ops(resnet18(10), shapes, inference=True)
    )
    backend = make_backend(backend_name, "float32")
    pm = ml.compile(
        resnet18(num_classes=10),
        backend,
        shapes=shapes,
        data_keys={"input"},
        inference=True,
        jit=False,
    )
    torch.manual_seed(0)
    ref = randomize_batchnorm(torch_resnet18(num_classes=10)).eval()
    params = pm.load_weights(ref.state_dict())
    x = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    out = pm.evaluate(params, {"input": backend.array(x)})["output"]
    expected = ref(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(pm.backend.to_numpy(out), expected, atol=1e-4)


def test_resnet18_training_step_matches_torch():
    """Training mode (batch statistics) on Torch in float64 (with batch statistics over
    few values float32 rounding is amplified): outputs, gradients of every parameter
    and updated running statistics."""
    shapes = {"input": [2, 3, 32, 32]}
    backend = make_backend("torch", "float64")
    pm = ml.compile(
        resnet18(num_classes=10),
        backend,
        shapes=shapes,
        data_keys={"input"},
        jit=False,
    )
    torch.manual_seed(0)
    ref = randomize_batchnorm(torch_resnet18(num_classes=10)).double().train()
    params = pm.load_weights(ref.state_dict())
    x = RNG.standard_normal((2, 3, 32, 32))
    expected = ref(torch.from_numpy(x))
    grad_out = RNG.standard_normal(tuple(expected.shape))
    expected.backward(torch.from_numpy(grad_out))
    outputs, grads = pm.evaluate(
        params,
        {"input": backend.array(x)},
        output_gradients={"output": backend.array(grad_out)},
    )
    tol = {"rtol": 1e-6, "atol": 1e-8}
    np.testing.assert_allclose(
        outputs["output"].numpy(), expected.detach().numpy(), **tol
    )
    for name, param in ref.named_parameters():
        key = name.replace(".", "_")
        np.testing.assert_allclose(
            grads[key].numpy(), param.grad.numpy(), **tol, err_msg=key
        )
    for name, buffer in ref.named_buffers():
        if "running" in name:
            key = name.replace(".", "_") + "_updated"
            np.testing.assert_allclose(
                outputs[key].numpy(), buffer.numpy(), **tol, err_msg=key
            )


# -- the guide's load_pretrained_resnet, with the hand-written module (no download) ----


def load_pretrained_resnet():
    # Create Mithril model
    ml_model = ml_resnet18(num_classes=1000)

    # Load PyTorch model and weights
    torch_model = torch_resnet18_pretrained(pretrained=True)
    torch_state_dict = torch_model.state_dict()

    # Compile Mithril model
    backend = ml.TorchBackend()
    compiled_model = ml.compile(
        ml_model,
        backend=backend,
        shapes={"input": [1, 3, 224, 224]},
        data_keys={"input"},
    )

    # Convert and load weights
    ml_params = {}
    for torch_key, torch_param in torch_state_dict.items():
        ml_key = torch_key.replace(".", "_")
        if ml_key in compiled_model.shapes:
            ml_params[ml_key] = backend.array(torch_param.numpy())

    return compiled_model, ml_params


ml_resnet18 = resnet18
PRETRAINED = {}


def torch_resnet18_pretrained(pretrained=True):
    """Stands in for ``torchvision.models.resnet18(pretrained=True)``: fixed random
    weights and running statistics (nothing can be downloaded)."""
    if "model" not in PRETRAINED:
        torch.manual_seed(1)
        PRETRAINED["model"] = randomize_batchnorm(torch_resnet18(), seed=1)
    return PRETRAINED["model"]


@pytest.mark.slow  # torch.compile of ResNet-18 (the recipe compiles with jit)
def test_guide_load_pretrained_resnet():
    compiled_model, ml_params = load_pretrained_resnet()
    keys = {*compiled_model.trainable_keys, *compiled_model.state_keys}
    assert set(ml_params) == keys
    torch_model = torch_resnet18_pretrained()
    PRETRAINED.clear()  # train() below moves its running statistics
    x = RNG.standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.no_grad():
        expected_eval = torch_model.eval()(torch.from_numpy(x)).numpy()
        expected_train = torch_model.train()(torch.from_numpy(x)).numpy()
    backend = compiled_model.backend
    # Compiled for training (the recipe's default): batch statistics, as train().
    outputs = compiled_model.evaluate(ml_params, {"input": backend.array(x)})
    np.testing.assert_allclose(outputs["output"].numpy(), expected_train, atol=1e-4)
    # The same params in an inference-mode model match torch's eval().
    pm = ml.compile(
        ml_resnet18(num_classes=1000),
        backend,
        shapes={"input": [1, 3, 224, 224]},
        data_keys={"input"},
        inference=True,
        jit=False,
    )
    out = pm.evaluate(ml_params, {"input": backend.array(x)})["output"]
    np.testing.assert_allclose(out.numpy(), expected_eval, atol=1e-4)


def test_running_statistics_are_not_differentiated(backend_name):
    """A state's new value (``bn_running_mean_updated``) is returned, not
    differentiated: no output gradient is taken for it and the backward pass does
    not start from it (a C backward used to spend a pass over the activations on
    it)."""
    model = Model()
    model |= BatchNorm2D(3, name="bn")(input="input", output=IOKey("output"))
    backend = ml.backend(backend_name)
    pm = ml.compile(model, backend, shapes={"input": [2, 3, 4, 4]}, inference=False)
    assert set(pm.program.differentiable_outputs) == {"output"}
    params = {
        "bn_weight": np.ones(3, np.float32),
        "bn_bias": np.zeros(3, np.float32),
        "bn_running_mean": np.zeros(3, np.float32),
        "bn_running_var": np.ones(3, np.float32),
    }
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    seed = backend.array(np.ones(3, np.float32))
    with pytest.raises(ml.MithrilError, match="bn_running_mean_updated"):
        pm.evaluate(
            {k: backend.array(v) for k, v in params.items()},
            {"input": backend.array(x)},
            output_gradients={"bn_running_mean_updated": seed},
        )
