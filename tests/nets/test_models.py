import pytest
import torch

from mcdrop import Dropout, DropoutMLP


def test_reference_architecture_shapes():
    model = DropoutMLP(784, [256, 256], 10, dropout=[0.2, 0.5])
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert [m.p for m in model.modules() if isinstance(m, Dropout)] == [0.2, 0.5]


def test_regression_heads():
    homo = DropoutMLP(8, [16], 1, head="homoscedastic", tau=2.0, input_dropout=0.1)
    hetero = DropoutMLP(8, [16], 1, head="heteroscedastic")
    x = torch.randn(5, 8)
    assert homo(x).shape == (5,)
    assert hetero(x).shape == (5, 2)
    assert isinstance(homo.net[0], Dropout)
    assert homo.config()["tau"] == 2.0


def test_target_scaling_applies_to_mean_and_variance():
    model = DropoutMLP(2, [4], 1, head="heteroscedastic").eval()
    x = torch.randn(3, 2)
    base = model(x)
    model.target_shift.fill_(10.0)
    model.target_scale.fill_(2.0)
    scaled = model(x)
    assert torch.allclose(scaled[:, 0], base[:, 0] * 2 + 10)
    assert torch.allclose(scaled[:, 1], base[:, 1] + 2 * torch.log(torch.tensor(2.0)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dropout": [0.1]}, "one rate per hidden layer"),
        ({"head": "homoscedastic"}, "noise precision tau"),
        ({"head": "regression"}, "is not a valid Task"),
        ({"dropout": 2.0}, "between 0 and 1"),
    ],
)
def test_invalid_configs(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DropoutMLP(4, [8, 8], 1, **kwargs)


# ---------------------------------------------------------------------------------------------- DropoutCNN


def test_cnn_shapes_config_round_trip_and_cost():
    from mcdrop.nets.models import DropoutCNN, build_model, multiply_adds
    from mcdrop.sampling.layers import ChannelDropout

    torch.manual_seed(0)
    model = DropoutCNN((28, 28), 10, channels=(4, 8), hidden=(16,), channel_dropout=(0.1, 0.2), dropout=0.5).eval()
    x = torch.rand(3, 784)
    assert model(x).shape == (3, 10)
    assert torch.equal(model(x), model(x.reshape(3, 28, 28)))  # flat rows or images
    assert [m.p for m in model.modules() if isinstance(m, ChannelDropout)] == [0.1, 0.2]
    rebuilt = build_model(model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert torch.equal(rebuilt.eval()(x), model(x))
    # 3x3 convs: 28*28*4*1*9 + 14*14*8*4*9, then 8*7*7 -> 16 -> 10
    assert multiply_adds(model, x[:1]) == 28 * 28 * 4 * 9 + 14 * 14 * 8 * 4 * 9 + 392 * 16 + 16 * 10
    # the first block's pooled maps, the flattened last block, the dense layer's pre-activation and ReLU
    assert model.feature_layers() == ["net.3", "net.10", "net.11", "net.12"]


def test_cnn_convolves_channels_last_and_saves_the_same_files(tmp_path):
    """The shipped CNN loads with channels-last convolution weights (the fast layout on a CPU), its MC answers
    are those of the plain layout within float32 rounding, and saving it again writes the bundled tensors bit
    for bit."""
    from safetensors.torch import load_file

    from mcdrop.nets.artifacts import bundled_models_dir, load_artifact, save_model
    from mcdrop.sampling.engine import MCEngine
    from tests.tolerances import assert_outputs_close

    model = load_artifact("fashion-cnn").model
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert sum(not w.is_contiguous() for w in convs) == 3  # one input channel: the first is both layouts at once
    x = torch.rand(6, 784, generator=torch.Generator().manual_seed(0))
    fast = MCEngine(model).sample(x, n_samples=8, seed=3)
    plain = load_artifact("fashion-cnn").model.to(memory_format=torch.contiguous_format)
    assert all(m.weight.is_contiguous() for m in plain.modules() if isinstance(m, torch.nn.Conv2d))
    assert_outputs_close(fast, MCEngine(plain).sample(x, n_samples=8, seed=3))
    save_model(model, tmp_path / "again", card={"name": "again", "version": "1", "task": "classification",
                                                "input_shape": [28, 28], "normalisation": "pixels / 255"})
    saved, bundled = load_file(tmp_path / "again" / "weights.safetensors"), load_file(
        bundled_models_dir() / "fashion-cnn" / "weights.safetensors")
    assert saved.keys() == bundled.keys() and all(torch.equal(saved[k], bundled[k]) for k in saved)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channel_dropout": (0.1,)}, "one rate per block"),
    ({"dropout": (0.1, 0.2)}, "one rate per hidden layer"),
    ({"head": "homoscedastic"}, "is a classifier"),
    ({"image_shape": (28,)}, "height, width"),
    ({"channels": (4, 4, 4, 4, 4)}, "to nothing"),
])
def test_cnn_invalid_configs(kwargs, message):
    from mcdrop.nets.models import DropoutCNN

    with pytest.raises(ValueError, match=message):
        DropoutCNN(**{"image_shape": (28, 28), "channels": (4, 8), **kwargs})


def test_logit_layer_is_the_last_linear_before_the_temperature():
    """``logit_layer()`` names the module whose outputs, divided by the temperature, are the model's outputs (the
    OOD score's energy reads them); a regression head has none."""
    from mcdrop.nets.models import DropoutCNN
    from mcdrop.sampling.engine import MCEngine

    torch.manual_seed(1)
    mlp = DropoutMLP(12, [8, 8], 3, dropout=0.2).eval()
    cnn = DropoutCNN((8, 8), 3, channels=(2,), hidden=(6,), channel_dropout=0.1, dropout=0.5).eval()
    for model, x in ((mlp, torch.randn(4, 12)), (cnn, torch.rand(4, 64))):
        model.temperature.fill_(0.5)
        name = model.logit_layer()
        assert isinstance(dict(model.named_modules())[name], torch.nn.Linear)
        out, captured = MCEngine(model).deterministic_features(x, [name])
        torch.testing.assert_close(captured[name] / 0.5, out)
    assert DropoutMLP(4, [8], 1, head="homoscedastic", tau=1.0).logit_layer() is None
