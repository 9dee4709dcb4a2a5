"""ResNet benchmarks (issue: conv / resnet).

(a) ResNet-18 forward, batch 8 x 3 x 64 x 64, inference mode, float32, on Torch (CPU, or
    CUDA with --device cuda): the compiled mithril model without and with jit
    (torch.compile) vs the same network hand-written in PyTorch, eager, no_grad; and a
    training step (forward + gradients of every parameter) vs PyTorch autograd.
(b) The same forward on the NumPy backend vs the Torch backend (CPU).
(c) Build and compile time of resnet50 (NumPy and Torch backends).

Run: python benchmarks/bench_models_resnet.py [--device cuda] [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
from _timing import best_of_each
from torch import nn

import mithril_core as ml
from mithril_core.models import resnet18, resnet50

SHAPE = (8, 3, 64, 64)


class BasicBlock(nn.Module):
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


class TorchResNet18(nn.Module):
    """torchvision's resnet18, written out (module names as torchvision)."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(64, 1)
        self.layer2 = self._make_layer(128, 2)
        self.layer3 = self._make_layer(256, 2)
        self.layer4 = self._make_layer(512, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)

    def _make_layer(self, planes, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        first = BasicBlock(self.inplanes, planes, stride, downsample)
        self.inplanes = planes
        return nn.Sequential(first, BasicBlock(planes, planes))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def compiled(backend, *, inference=True, jit=False):
    return ml.compile(
        resnet18(1000),
        backend,
        shapes={"input": list(SHAPE)},
        data_keys={"input"},
        inference=inference,
        jit=jit,
    )


def torch_forward(args):
    device = args.device
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    repeat, number = (3, 3) if args.quick else (7, 5)
    print(f"== (a) ResNet-18 forward {list(SHAPE)}, float32, torch on {device}")
    torch.manual_seed(0)
    ref = TorchResNet18().to(device).eval()
    backend = ml.TorchBackend(device=device) if device != "cpu" else ml.TorchBackend()
    x = torch.randn(SHAPE, device=device)
    data = {"input": x}

    def eager():
        with torch.no_grad():
            return ref(x)

    fns = {"hand-written torch, eager": eager}
    for jit in (False, True):
        pm = compiled(backend, jit=jit)
        params = pm.load_weights(ref.state_dict())
        start = time.perf_counter()
        pm.evaluate(params, data)
        sync()
        label = f"mithril torch, jit={jit}"
        print(f"  ({label}: first call {time.perf_counter() - start:.2f} s)")
        fns[label] = functools.partial(pm.evaluate, params, data)
    results = best_of_each(fns, repeat, number, sync=lambda _: sync())
    base = results["hand-written torch, eager"]
    for label, seconds in results.items():
        print(f"{label:<28} {seconds * 1e3:8.2f} ms  ratio {seconds / base:.3f}")

    print(f"-- training step (forward + all parameter gradients), torch on {device}")
    ref.train()
    pm = compiled(backend, inference=False)
    params = pm.load_weights(ref.state_dict())
    grad = torch.ones(SHAPE[0], 1000, device=device)

    def torch_step():
        ref.zero_grad(set_to_none=True)
        ref(x).backward(grad)

    results = best_of_each(
        {
            "mithril": functools.partial(
                pm.evaluate, params, data, output_gradients={"output": grad}
            ),
            "torch": torch_step,
        },
        repeat,
        number,
        sync=lambda _: sync(),
    )
    ours, theirs = results["mithril"], results["torch"]
    print(
        f"mithril torch (jit=False) {ours * 1e3:8.2f} ms  hand-written autograd "
        f"{theirs * 1e3:8.2f} ms  ratio {ours / theirs:.3f}"
    )


def numpy_vs_torch(args):
    repeat, number = (2, 1) if args.quick else (5, 2)
    print(f"\n== (b) ResNet-18 forward {list(SHAPE)}, float32, CPU: NumPy vs Torch")
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    torch.manual_seed(0)
    state = TorchResNet18().eval().state_dict()
    fns = {}
    for name in ("numpy", "torch"):
        backend = ml.backend(name, dtype=ml.float32)
        pm = compiled(backend)
        params = pm.load_weights(state)
        fns[name] = functools.partial(pm.evaluate, params, {"input": backend.array(x)})
    times = best_of_each(fns, repeat, number)
    for name, seconds in times.items():
        print(f"mithril {name:<6} {seconds * 1e3:9.2f} ms")
    print(f"numpy / torch ratio {times['numpy'] / times['torch']:.2f}")


def compile_time():
    print("\n== (c) resnet50 build + compile time (inference=True, jit=False)")
    for name in ("numpy", "torch"):
        start = time.perf_counter()
        model = resnet50(1000)
        built = time.perf_counter()
        pm = ml.compile(
            model,
            ml.backend(name),
            shapes={"input": [1, 3, 224, 224]},
            data_keys={"input"},
            inference=True,
            jit=False,
        )
        done = time.perf_counter()
        print(
            f"{name:<6} build {built - start:6.3f} s  compile {done - built:6.3f} s  "
            f"({len(pm.graph.nodes)} primitive calls, {len(pm.input_keys)} inputs)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch_forward(args)
    numpy_vs_torch(args)
    compile_time()
