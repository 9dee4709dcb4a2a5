"""Quickstart: train an MLP on scikit-learn's bundled digits and print test accuracy.

Run ``python -m mithril_core demo [--backend numpy|torch|jax|mlx|c] [--epochs N]``.
Nothing is downloaded: the digits (8x8 images, 10 classes) ship with scikit-learn.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

import mithril_core as ml
from mithril_core.models import MLP, Buffer, IOKey, LogSoftmax, Model, Relu


def build_classifier(hidden: int, classes: int) -> Model:
    """An MLP with a ``logits`` output and a ``loss`` output: the mean cross-entropy
    against one-hot ``target`` rows."""
    model = Model(name="digits_classifier")
    mlp = MLP(activations=[Relu(), Relu(), None], dimensions=[hidden, hidden, classes])
    model |= mlp(input="input", output=IOKey("logits"))
    log_probs = LogSoftmax(axis=-1)(model.logits)
    loss = -(log_probs * IOKey("target")).sum(axis=1).mean()
    model |= Buffer()(loss, output=IOKey("loss"))
    return model


def load_data(seed: int) -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        msg = (
            "error: the demo needs scikit-learn; install it from the root of the "
            'mithril_core checkout with `python -m pip install -e ".[demo]"`.'
        )
        raise SystemExit(msg) from exc
    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(0.8 * len(x))
    return x[:split], y[:split], x[split:], y[split:]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mithril_core demo")
    parser.add_argument(
        "--backend", default="numpy", help="numpy, torch, jax, mlx or c"
    )
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_data(args.seed)
    backend = ml.backend(args.backend, dtype=ml.float32)
    model = build_classifier(args.hidden, 10)
    batch = args.batch_size
    start = time.perf_counter()
    train = ml.compile(
        model,
        backend,
        shapes={"input": [batch, 64], "target": [batch, 10]},
        data_keys={"input", "target"},
        discard_keys={"logits"},
    )
    predict = ml.compile(
        build_classifier(args.hidden, 10),
        backend,
        shapes={"input": [len(x_test), 64]},
        data_keys={"input"},
        discard_keys={"loss"},
        inference=True,
    )
    print(f"compiled for {args.backend} in {time.perf_counter() - start:.2f} s")
    params = train.randomize_params(seed=args.seed)
    velocity = {k: backend.zeros(*backend.array_info(v)[0]) for k, v in params.items()}  # type: ignore[index]
    one = backend.ones(())
    eye = np.eye(10)
    rng = np.random.default_rng(args.seed)
    steps_per_epoch = len(x_train) // batch
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        total = 0.0
        tic = time.perf_counter()
        for step in range(steps_per_epoch):
            idx = order[step * batch : (step + 1) * batch]
            data = {
                "input": backend.array(x_train[idx]),
                "target": backend.array(eye[y_train[idx]]),
            }
            outputs, grads = train.evaluate(
                params, data, output_gradients={"loss": one}
            )
            total += float(backend.to_numpy(outputs["loss"]))
            for key, grad in grads.items():
                velocity[key] = args.momentum * velocity[key] + grad
                params[key] = params[key] - args.lr * velocity[key]
        rate = steps_per_epoch * batch / (time.perf_counter() - tic)
        if epoch == 1 or epoch % 5 == 0 or epoch == args.epochs:
            accuracy = _accuracy(predict, params, backend, x_test, y_test)
            print(
                f"epoch {epoch:3d}  loss {total / steps_per_epoch:.4f}  "
                f"test accuracy {accuracy:.4f}  ({rate:,.0f} samples/s)"
            )
    accuracy = _accuracy(predict, params, backend, x_test, y_test)
    print(f"final test accuracy: {accuracy:.4f}")
    return 0


def _accuracy(
    predict: Any, params: dict[str, Any], backend: Any, x: np.ndarray, y: np.ndarray
) -> float:
    logits = predict.evaluate(params, {"input": backend.array(x)})["logits"]
    return float(np.mean(np.argmax(backend.to_numpy(logits), axis=1) == y))


if __name__ == "__main__":
    raise SystemExit(main())
