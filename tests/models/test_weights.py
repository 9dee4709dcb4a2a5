"""Weight import: state dicts, .safetensors and .pt files into compiled models' params,
with every mismatch reported by name."""

import numpy as np
import pytest
import torch

import mithril_core as ml
from mithril_core.models import BatchNorm2D, Flatten, IOKey, Linear, Model, Relu
from mithril_core.weights import WeightsError, load_weights


class TorchNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm2d(3)
        self.fc = torch.nn.Linear(12, 5)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(x)).flatten(1))


def ml_net():
    model = Model(name="net")
    model |= BatchNorm2D(3, name="bn")(input=IOKey("input", shape=[None, 3, 2, 2]))
    model += Relu()
    model += Flatten(start_dim=1)
    model += Linear(5, name="fc")(output=IOKey("output"))
    return model


def torch_net():
    torch.manual_seed(0)
    net = TorchNet()
    with torch.no_grad():
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
        net.bn.running_mean.uniform_(-1, 1)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


X = np.random.default_rng(0).standard_normal((4, 3, 2, 2)).astype(np.float32)


def compiled(backend_name="numpy"):
    backend = ml.backend(backend_name, dtype=ml.float32)
    return ml.compile(
        ml_net(),
        backend,
        shapes={"input": [4, 3, 2, 2]},
        data_keys={"input"},
        inference=True,
    )


def check_outputs(pm, params, net):
    out = pm.evaluate(params, {"input": pm.backend.array(X)})["output"]
    expected = net(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(pm.backend.to_numpy(out), expected, atol=1e-5)


def test_state_dict_loads_params_and_state(backend_name):
    pm, net = compiled(backend_name), torch_net()
    params = pm.load_weights(net.state_dict())
    assert set(params) == {*pm.trainable_keys, *pm.state_keys}
    assert {"bn_running_mean", "bn_running_var"} <= set(params)
    for value in params.values():
        assert pm.backend.array_info(value)[1] == "float32"
    check_outputs(pm, params, net)


def test_numpy_mapping_and_function_form():
    pm, net = compiled(), torch_net()
    arrays = {k: v.numpy() for k, v in net.state_dict().items()}
    check_outputs(pm, load_weights(pm, arrays), net)


def test_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    pm, net = compiled(), torch_net()
    path = tmp_path / "net.safetensors"
    save_file({k: v.numpy() for k, v in net.state_dict().items()}, str(path))
    check_outputs(pm, pm.load_weights(path), net)
    check_outputs(pm, pm.load_weights(str(path)), net)


def test_pt_file(tmp_path):
    pm, net = compiled(), torch_net()
    path = tmp_path / "net.pt"
    torch.save(net.state_dict(), path)
    check_outputs(pm, pm.load_weights(path), net)


def test_pt_file_that_is_not_a_state_dict(tmp_path):
    pm = compiled()
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(TypeError, match="not a state dict"):
        pm.load_weights(path)


def test_unknown_file_type(tmp_path):
    with pytest.raises(ValueError, match="unknown file type '.npz'"):
        compiled().load_weights(tmp_path / "w.npz")


def test_missing_unexpected_and_mismatched_keys_in_one_error():
    pm, net = compiled(), torch_net()
    state = dict(net.state_dict())
    del state["bn.running_var"]
    state["head.weight"] = torch.zeros(2, 2)
    state["fc.bias"] = torch.zeros(6)
    with pytest.raises(WeightsError) as info:
        pm.load_weights(state)
    message = str(info.value)
    assert "missing keys ['bn_running_var']" in message
    assert "unexpected keys ['head.weight (as head_weight)']" in message
    assert "fc_bias: expected [5], got [6]" in message
    assert isinstance(info.value, KeyError)


def test_num_batches_tracked_is_ignored_unless_asked():
    pm, net = compiled(), torch_net()
    assert "bn.num_batches_tracked" in net.state_dict()
    pm.load_weights(net.state_dict())
    with pytest.raises(WeightsError, match=r"unexpected keys \['bn.num_batches_"):
        pm.load_weights(net.state_dict(), ignore=())


def test_non_strict_warns_and_returns_what_matched():
    pm, net = compiled(), torch_net()
    state = dict(net.state_dict())
    del state["fc.weight"]
    state["fc.bias"] = torch.zeros(7)
    with pytest.warns(UserWarning, match="missing keys \\['fc_weight'\\]") as record:
        params = pm.load_weights(state, strict=False)
    assert "fc_bias: expected [5], got [7]" in str(record[0].message)
    assert "fc_weight" not in params and "fc_bias" not in params
    assert set(params) == {"bn_weight", "bn_bias", "bn_running_mean", "bn_running_var"}


def test_rename_mapping_and_callable():
    pm, net = compiled(), torch_net()
    prefixed = {f"model.{k}": v for k, v in net.state_dict().items()}
    check_outputs(pm, pm.load_weights(prefixed, rename=lambda k: k[6:]), net)
    renamed = dict(net.state_dict())
    renamed["classifier.weight"] = renamed.pop("fc.weight")
    params = pm.load_weights(renamed, rename={"classifier.weight": "fc.weight"})
    check_outputs(pm, params, net)
    # A callable returning None drops a tensor on purpose; it is then missing.
    with pytest.raises(WeightsError, match=r"missing keys \['fc_bias'\]"):
        pm.load_weights(
            net.state_dict(), rename=lambda k: None if k == "fc.bias" else k
        )


def test_two_sources_for_one_key():
    pm, net = compiled(), torch_net()
    state = dict(net.state_dict())
    state["fc_bias"] = state["fc.bias"]
    with pytest.raises(WeightsError, match="keys given twice"):
        pm.load_weights(state)


def test_bad_source_type():
    with pytest.raises(TypeError, match="mapping of tensors"):
        compiled().load_weights(42)


def test_bfloat16_tensors_load_as_backend_dtype():
    pm, net = compiled(), torch_net()
    state = {k: v.to(torch.bfloat16) for k, v in net.state_dict().items()}
    params = pm.load_weights(state)
    assert params["fc_weight"].dtype == np.float32
    np.testing.assert_allclose(
        params["fc_weight"], net.fc.weight.detach().numpy(), rtol=1e-2
    )
