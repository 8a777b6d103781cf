"""Same seed, same initial weights: reference values recorded before the timm-registry refactor.

The demo's metrics depend on every initial weight and on how many random numbers model
building draws (training continues from the same generator). These values were computed
on the code before SimpleCNN was registered with timm and weight files went through
`timm.models.load_pretrained`; a change here changes the demo's results.
"""

from __future__ import annotations

from importlib.resources import files

import pytest
import torch

from cxrlab.config import experiment_of, load_study
from cxrlab.models.checkpoint import build_network

#: Per demo model: (float64 sum of the state dict, tensors in it, first 3 values of the first
#: conv weight, first 3 of the classifier weight, first 2 of its bias, torch.rand(1) after).
REFERENCE = {
    "simple_cnn": (
        925.9916312123593,
        50,
        [-0.24677294492721558, -0.003352744970470667, -0.10926494747400284],
        [-0.02804536558687687, 0.06114257872104645, -0.08669467270374298],
        [0.05232017859816551, -0.01847284659743309],
        0.6212797164916992,
    ),
    "efficientnet_lite0": (
        426133.3976292535,
        296,
        [-3.6090471744537354, -5.041141986846924, -0.28691744804382324],
        [0.012594275176525116, 0.014249412342905998, -0.0036260492634028196],
        [0.0, 0.0],  # init_head: a fresh head starts at zero bias, weights N(0, 0.01)
        0.7138311266899109,
    ),
}


def _demo_entries():
    study = load_study(files("cxrlab") / "configs" / "demo.yaml")
    return len(study.data.pathologies), {e.name: experiment_of(e) for e in study.model_entries()}


def _fingerprint(model: torch.nn.Module, after: float):
    state = model.state_dict()
    first = state[model.pretrained_cfg["first_conv"] + ".weight"]
    head = model.get_classifier()
    return (
        sum(v.double().sum().item() for v in state.values()),
        len(state),
        first.flatten()[:3].tolist(),
        head.weight.flatten()[:3].tolist(),
        head.bias.flatten()[:2].tolist(),
        after,
    )


@pytest.mark.parametrize("name", list(REFERENCE))
def test_demo_models_start_from_the_recorded_weights(name):
    num_classes, configs = _demo_entries()
    config = configs[name]
    with torch.random.fork_rng():
        torch.manual_seed(config.train.seed)  # as the trainer's seed_everything does
        model = build_network(config, num_classes, pretrained=True)
        after = torch.rand(1).item()  # same number of random draws while building
    total, count, first, head_w, head_b, rng_after = REFERENCE[name]
    got = _fingerprint(model, after)
    assert got[0] == pytest.approx(total, rel=1e-12, abs=1e-9)
    assert got[1:] == (count, first, head_w, head_b, rng_after)


def test_a_timm_family_from_random_init_starts_from_the_recorded_weights():
    from cxrlab.models import create_model

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_model("resnet18", 5, drop_rate=0.2)
        after = torch.rand(1).item()
    got = _fingerprint(model, after)
    assert got[0] == pytest.approx(7633.685355529709, rel=1e-12, abs=1e-9)
    assert got[1:] == (
        122,
        [-0.017963942140340805, -0.022352226078510284, -0.025877827778458595],
        [0.005905958358198404, 0.0063582416623830795, -0.012828313745558262],
        [0.0, 0.0],
        0.4812089800834656,
    )
