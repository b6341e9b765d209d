"""symbols/: every registered network builds to an (N, 202) fc1; m1 x0.25 reproduces the original checkpoint."""
import os

import cv2
import mxnet as mx
import numpy as np
import pytest

import symbols
from agegender import config
from agegender.checkpoint import checkpoint_paths, load_params, parse_model_spec
from agegender.model import faces_to_batch

BATCH = 2
DATA_SHAPE = (BATCH, 3) + config.IMAGE_SIZE


def output_shape(sym, data_shape=DATA_SHAPE):
    _, out_shapes, _ = sym.infer_shape(data=data_shape)
    assert sym.list_outputs() == [config.OUTPUT_LAYER]
    return out_shapes[0]


def original_arrays(original_model):
    prefix, epoch = parse_model_spec(original_model)
    return load_params(checkpoint_paths(prefix, epoch)[1])


def test_registry_lists_both_families():
    assert symbols.list_families() == ["mobilenet", "resnet"]
    networks = symbols.list_networks()
    assert "m1" in networks and "r50" in networks and "r269" in networks
    assert symbols.parse_network("R50") == ("resnet", 50)
    assert symbols.parse_network("m1") == ("mobilenet", 1)


@pytest.mark.parametrize("network", symbols.list_networks())
def test_every_network_gives_fc1(network):
    sym = symbols.get_symbol(network, num_classes=config.FC1_SIZE, multiplier=0.25)
    assert output_shape(sym) == (BATCH, config.FC1_SIZE)


@pytest.mark.parametrize("head", symbols.HEADS)
def test_every_head_on_m1(head):
    sym = symbols.get_symbol("m1", multiplier=0.25, version_output=head)
    channels = 256  # 32 * base width 8
    expected = {"Z": (BATCH, channels, 7, 7), "A": (BATCH, channels), "AX": (BATCH, channels)}
    assert output_shape(sym) == expected.get(head, (BATCH, config.FC1_SIZE))


@pytest.mark.parametrize("network", ["r18", "r50", "r101"])
@pytest.mark.parametrize("unit", [1, 2, 3, "3x"])
@pytest.mark.parametrize("se", [0, 1])
def test_resnet_units_and_se(network, unit, se):
    sym = symbols.get_symbol(network, version_unit=unit, version_se=se)
    assert output_shape(sym) == (BATCH, config.FC1_SIZE)
    has_se = any("_se_conv1" in name for name in sym.list_arguments())
    assert has_se == bool(se)


@pytest.mark.parametrize("network", ["m1", "r34"])
@pytest.mark.parametrize("version_input", [0, 1, 2])
def test_input_versions(network, version_input):
    if network == "m1" and version_input == 2:
        with pytest.raises(ValueError, match="version_input"):
            symbols.get_symbol(network, version_input=version_input)
        return
    sym = symbols.get_symbol(network, multiplier=0.5, version_input=version_input)
    assert output_shape(sym) == (BATCH, config.FC1_SIZE)
    first_conv = [name for name in sym.list_arguments() if name.endswith("weight")][0]
    kernel = sym.infer_shape(data=DATA_SHAPE)[0][sym.list_arguments().index(first_conv)][2:]
    assert kernel == ((7, 7) if network == "r34" and version_input == 0 else (3, 3))


def test_width_multiplier():
    sym = symbols.get_symbol("m1", multiplier=1.0)
    shapes = dict(zip(sym.list_arguments(), sym.infer_shape(data=DATA_SHAPE)[0]))
    assert shapes["conv_1_conv2d_weight"] == (32, 3, 3, 3)
    assert shapes["conv_14_conv2d_weight"] == (1024, 1024, 1, 1)
    assert shapes["pre_fc1_weight"] == (config.FC1_SIZE, 1024)


@pytest.mark.parametrize("kwargs, message", [
    ({"network": "r51"}, "unsupported|unknown network"),
    ({"network": "x50"}, "unknown network"),
    ({"network": "m2"}, "unknown network"),
    ({"network": "resnet"}, "unknown network"),
    ({"network": "m1", "version_output": "Q"}, "output head"),
    ({"network": "r18", "version_unit": 4}, "version_unit"),
    ({"network": "r18", "version_act": "swish"}, "activation"),
    ({"network": "m1", "multiplier": 0.01}, "multiplier"),
])
def test_bad_options_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        symbols.get_symbol(**kwargs)


def test_register_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        symbols.register("resnet", prefix="q", variants=(1,))(lambda *a, **k: None)
    with pytest.raises(ValueError, match="prefix"):
        symbols.register("other", prefix="r", variants=(1,))(lambda *a, **k: None)
    assert symbols.list_families() == ["mobilenet", "resnet"]


def test_count_params():
    sym = symbols.get_symbol("m1", multiplier=0.25)
    arg_shapes, _, aux_shapes = sym.infer_shape(data=DATA_SHAPE)
    args = sum(int(np.prod(s)) for name, s in zip(sym.list_arguments(), arg_shapes) if name != "data")
    aux = sum(int(np.prod(s)) for s in aux_shapes)
    assert symbols.count_params(sym, DATA_SHAPE) == args
    assert symbols.count_params(sym, DATA_SHAPE, include_aux=True) == args + aux
    with_loss = mx.sym.SoftmaxOutput(data=sym, name="softmax")
    assert symbols.count_params(with_loss, DATA_SHAPE) == args


def test_m1_matches_original_checkpoint_names_and_shapes(original_model):
    arg_params, aux_params = original_arrays(original_model)
    sym = symbols.get_symbol("m1", multiplier=0.25, version_input=1, version_output="GAP")
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3) + config.IMAGE_SIZE)
    ours_args = {name: shape for name, shape in zip(sym.list_arguments(), arg_shapes) if name != "data"}
    ours_aux = dict(zip(sym.list_auxiliary_states(), aux_shapes))
    assert (len(ours_args), len(ours_aux)) == (88, 58)
    assert ours_args == {name: value.shape for name, value in arg_params.items()}
    assert ours_aux == {name: value.shape for name, value in aux_params.items()}
    stored = sum(v.size for v in arg_params.values()) + sum(v.size for v in aux_params.values())
    assert symbols.count_params(sym, (1, 3) + config.IMAGE_SIZE, include_aux=True) == stored


def test_m1_reproduces_original_fc1(original_model, reference_dir):
    arg_params, aux_params = original_arrays(original_model)
    face = cv2.imread(os.path.join(reference_dir, "test1_face0_aligned112.png"))
    expected = np.load(os.path.join(reference_dir, "test1_face0_fc1.npy"))
    sym = symbols.get_symbol("m1", multiplier=0.25)
    args = dict(arg_params, data=mx.nd.array(faces_to_batch([face])))
    exe = sym.bind(mx.cpu(), args, grad_req="null", aux_states=aux_params)
    got = exe.forward(is_train=False)[0].asnumpy()[0]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


@pytest.mark.parametrize("head", ["GAP", "GNAP", "GDC", "DX"])
def test_heads_train_forward_backward(head):
    sym = symbols.get_symbol("m1", multiplier=0.25, version_output=head)
    module = mx.mod.Module(sym, data_names=["data"], label_names=None)
    module.bind([("data", DATA_SHAPE)], for_training=True, inputs_need_grad=True)
    module.init_params(mx.init.Xavier())
    module.forward(mx.io.DataBatch([mx.nd.random.uniform(0, 255, DATA_SHAPE)]), is_train=True)
    output = module.get_outputs()[0]
    module.backward([mx.nd.ones(output.shape)])
    assert output.shape == (BATCH, config.FC1_SIZE)
    assert np.isfinite(output.asnumpy()).all()
    assert np.isfinite(module.get_input_grads()[0].asnumpy()).all()
