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
