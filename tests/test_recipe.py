"""The transfer recipe's pieces: defaults by start, learning rates per parameter group, the
weight EMA (what best.ckpt holds, exact resume), mixup and label smoothing, epoch selection,
test-time augmentation."""

from __future__ import annotations

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from cxrlab.config import TRANSFER_RECIPE, ExperimentConfig, ModelConfig, TrainConfig, build
from cxrlab.models.checkpoint import EMA_PREFIX, MODEL_PREFIX, load_model_from_checkpoint
from cxrlab.models.factory import create_model
from cxrlab.models.inference import TTA_VIEWS, predict_images, view
from cxrlab.train.engine import train_model
from cxrlab.train.module import layer_decay_groups, split_head
from helpers_run import make_tiny_run

NET = {"name": "simple_cnn", "kwargs": {"base_width": 8, "depth": 3}}
TINY = {"model": NET, "train": {"epochs": 2, "batch_size": 16, "patience": 10}}


def _config(**sections) -> dict:
    out = {key: dict(value) for key, value in TINY.items()}
    for section, values in sections.items():
        out.setdefault(section, {}).update(values)
    return out


def _fit(run, name="m", config=None, **kwargs):
    return train_model(run, config or _config(), name=name, progress_bar=False, **kwargs)


def _metrics(result) -> pd.DataFrame:
    return pd.read_csv(result.model_dir / "metrics.csv").drop(columns="seconds")


@pytest.fixture
def run(tmp_path):
    return make_tiny_run(tmp_path, n=64, size=32)


@pytest.fixture
def weights_file(tmp_path):
    """A simple_cnn state dict on disk: a 'pretrained' start that needs no download."""
    torch.manual_seed(5)
    net = create_model("simple_cnn", 2, in_chans=1, **NET["kwargs"])
    path = tmp_path / "start.pt"
    torch.save(net.state_dict(), path)
    return str(path)


# ---- defaults by start ------------------------------------------------------------------------
def test_a_pretrained_start_takes_the_recipe_for_what_it_does_not_give():
    scratch = build(ExperimentConfig, {"model": NET})
    assert (scratch.train.epochs, scratch.train.select, scratch.train.ema) == (30, "best", False)
    assert scratch.optim.backbone_lr_mult == 1.0
    for start in ({"pretrained": True}, {"weights": "w.pt"}):
        given = build(ExperimentConfig, {"model": {**NET, **start}, "train": {"epochs": 3}})
        assert given.train.epochs == 3  # given: kept
        assert given.train.select == TRANSFER_RECIPE["train"]["select"] == "last"
        assert given.optim.lr == TRANSFER_RECIPE["optim"]["lr"] != scratch.optim.lr
        assert given.schedule.warmup_epochs == TRANSFER_RECIPE["schedule"]["warmup_epochs"]
    objects = ExperimentConfig(model=ModelConfig(pretrained=True), train=TrainConfig(select="best"))
    assert objects.train.select == "best"
    assert objects.train.epochs == TRANSFER_RECIPE["train"]["epochs"]
    # a saved, complete config reads back as it was (resume compares configs)
    saved = build(ExperimentConfig, objects.model_dump(mode="json"))
    assert saved == objects


# ---- learning rates per parameter group ---------------------------------------------------------
def _groups(result) -> dict[str, dict]:
    state = torch.load(result.last_checkpoint, weights_only=True)["optimizer_states"][0]
    return {g["name"]: g for g in state["param_groups"]}


@pytest.mark.parametrize(
    ("start", "strategy", "head_lr", "backbone_lr"),
    [
        ("scratch", "full", 1e-3, 1e-3),
        ("mult", "full", 1e-3, 1e-3 * 0.3),
        ("weights", "full", 3e-4, 3e-4),
        ("weights", "freeze-then-unfreeze", 3e-4, 3e-4),
        ("weights", "linear-probe", 3e-4, None),
    ],
)
def test_parameter_groups_carry_the_intended_learning_rates(
    run, weights_file, start, strategy, head_lr, backbone_lr
):
    model = {**NET, "weights": weights_file} if start == "weights" else NET
    config = _config(model=model, train={**TINY["train"], "epochs": 1, "strategy": strategy})
    if start == "mult":
        config["optim"] = {"backbone_lr_mult": 0.3}
    result = _fit(run, config=config)
    groups = _groups(result)
    assert groups["head"]["initial_lr"] == pytest.approx(head_lr)
    assert groups["head_no_decay"]["initial_lr"] == pytest.approx(head_lr)
    if backbone_lr is None:
        assert not any(name.startswith("backbone") for name in groups)
    else:
        assert groups["backbone"]["initial_lr"] == pytest.approx(backbone_lr)
        assert groups["backbone_no_decay"]["weight_decay"] == 0.0
    # the head groups hold exactly the classifier's parameters
    net, _ = load_model_from_checkpoint(result.last_checkpoint)
    head, _ = split_head(net)
    n_head = sum(len(groups[g]["params"]) for g in ("head", "head_no_decay"))
    assert n_head == len(head)


def test_layer_decay_gives_each_depth_its_own_learning_rate(run):
    net = create_model("simple_cnn", 2, in_chans=1, **NET["kwargs"])
    groups = layer_decay_groups(net, lr=1e-3, weight_decay=1e-4, layer_decay=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    assert len(lr_of) == len(list(net.parameters()))  # every parameter, once
    depth = len({g["lr"] for g in groups})
    assert depth >= 3  # stem, blocks, head at least
    expected = [1e-3 * 0.5**i for i in reversed(range(depth))]
    assert sorted({g["lr"] for g in groups}) == pytest.approx(expected)
    head, _ = split_head(net)
    assert [lr_of[id(p)] for p in head] == pytest.approx([1e-3] * len(head))  # head keeps lr
    stem = next(iter(net.parameters()))
    assert lr_of[id(stem)] == pytest.approx(expected[0])  # the stem gets the least
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].ndim == 1)
    # through training: the optimiser holds those LRs, and metrics.csv logs the head's
    config = _config(optim={"lr": 1e-3, "layer_decay": 0.5}, train={**TINY["train"], "epochs": 1})
    result = _fit(run, config=config)
    saved = sorted({g["initial_lr"] for g in _groups(result).values()})
    assert saved == pytest.approx(expected)
    floor = build(ExperimentConfig, config).schedule.min_lr_ratio  # one epoch: cosine at its end
    assert _metrics(result)["lr"].iloc[0] == pytest.approx(1e-3 * floor)  # the head's, not 1e-3/4


# ---- weight EMA --------------------------------------------------------------------------------
class _HeadAfterEachStep(L.Callback):
    """The classifier weight after every optimiser step (callbacks run before the module's
    on_train_batch_end, where the EMA is updated)."""

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen.append(pl_module.model.get_classifier().weight.detach().clone())


def test_best_ckpt_holds_the_ema_of_the_trained_weights(run):
    spy = _HeadAfterEachStep()
    result = _fit(run, config=_config(train={**TINY["train"], "ema": True}), callbacks=[spy])
    # timm's ModelEmaV3 with warm-up, by hand: decay 0 at step 1, then 1 - t^(-2/3), <= 0.99
    expected = spy.seen[0]
    for t, weight in enumerate(spy.seen[1:], start=2):
        decay = min(1.0 - t ** (-2.0 / 3.0), 0.99)
        expected = decay * expected + (1.0 - decay) * weight
    state = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    key = "fc.weight"
    torch.testing.assert_close(state[EMA_PREFIX + key], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(state[MODEL_PREFIX + key], expected)  # the average, not the last
    model, info = load_model_from_checkpoint(result.best_checkpoint)
    assert info["weights"] == "ema"
    for name, value in model.state_dict().items():  # every tensor, buffers included
        assert torch.equal(value, state[EMA_PREFIX + name]), name


def test_without_ema_the_trained_weights_are_loaded(run):
    result = _fit(run)
    state = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    assert not any(k.startswith(EMA_PREFIX) for k in state)
    model, info = load_model_from_checkpoint(result.best_checkpoint)
    assert info["weights"] == "trained"
    assert torch.equal(model.state_dict()["fc.weight"], state[MODEL_PREFIX + "fc.weight"])


class _Killed(Exception):
    pass


class _KillAtEpoch(L.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Killed


def test_kill_and_resume_with_ema_matches_an_uninterrupted_run(run):
    config = _config(train={**TINY["train"], "epochs": 3, "ema": True, "select": "last"})
    straight = _fit(run, "straight", config=config)
    with pytest.raises(_Killed):
        _fit(run, "killed", config=config, callbacks=[_KillAtEpoch(2)])
    resumed = _fit(run, "killed", config=config, resume=True)
    pd.testing.assert_frame_equal(_metrics(straight), _metrics(resumed))
    a = torch.load(straight.best_checkpoint, weights_only=True)["state_dict"]
    b = torch.load(resumed.best_checkpoint, weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and any(k.startswith(EMA_PREFIX) for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_same_seed_same_metrics_with_the_recipe_and_ema(run, weights_file):
    config = _config(model={**NET, "weights": weights_file}, train={"batch_size": 16, "ema": True})
    assert build(ExperimentConfig, config).train.select == "last"  # the transfer recipe
    config["train"]["epochs"] = 2
    a, b = _fit(run, "a", config=config), _fit(run, "b", config=config)
    pd.testing.assert_frame_equal(_metrics(a), _metrics(b))
    config["train"]["seed"] = 1
    c = _fit(run, "c", config=config)
    assert not np.allclose(_metrics(c)["train_loss"], _metrics(a)["train_loss"])


# ---- mixup and label smoothing ------------------------------------------------------------------
class _Targets(L.Callback):
    """The label batches each training and validation step sees (after the batch transfer)."""

    def __init__(self) -> None:
        self.train: list[torch.Tensor] = []
        self.val: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.train.append(batch[1].detach().clone())

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val.append(batch[1].detach().clone())


def _hard(labels: list[torch.Tensor]) -> bool:
    y = torch.cat(labels)
    return bool(((y == 0) | (y == 1)).all())


def test_mixup_blends_training_labels_only(run):
    spy = _Targets()
    _fit(run, config=_config(augment={"mixup": 1.0}), callbacks=[spy])
    assert spy.train and spy.val
    assert not _hard(spy.train)  # soft labels: images blended in training
    assert _hard(spy.val)  # validation sees the images and labels as they are
    plain = _Targets()
    _fit(run, "plain", callbacks=[plain])
    assert _hard(plain.train)


def test_label_smoothing_moves_training_targets_only(run, monkeypatch):
    from cxrlab.train.module import ChestXrayClassifier

    seen: list[tuple[bool, torch.Tensor]] = []
    loss = ChestXrayClassifier.loss

    def spy(self, logits, y):
        seen.append((self.trainer.training, y.detach().clone()))
        return loss(self, logits, y)

    monkeypatch.setattr(ChestXrayClassifier, "loss", spy)
    _fit(run, config=_config(train={**TINY["train"], "label_smoothing": 0.2}))
    train = torch.cat([y for training, y in seen if training])
    val = torch.cat([y for training, y in seen if not training])
    assert train.unique().tolist() == pytest.approx([0.1, 0.9])  # y(1 - e) + e/2, e = 0.2
    assert set(val.unique().tolist()) == {0.0, 1.0}


# ---- epoch selection ---------------------------------------------------------------------------
def test_select_last_trains_every_epoch_and_keeps_the_final_one(run):
    # a frozen backbone, a negligible LR and patience 1 stop a select=best run after epoch 1
    train = {**TINY["train"], "epochs": 3, "patience": 1, "strategy": "linear-probe"}
    config = _config(optim={"lr": 1e-12}, train=train)
    config["train"]["select"] = "last"
    result = _fit(run, config=config)
    assert result.epochs_run == 3 and not result.stopped_early and result.best_epoch == 2
    assert torch.load(result.best_checkpoint, weights_only=True)["epoch"] == 2
    config["train"]["select"] = "best"
    early = _fit(run, "early", config=config)
    assert early.stopped_early and early.best_epoch == 0
    assert torch.load(early.best_checkpoint, weights_only=True)["epoch"] == 0


# ---- test-time augmentation --------------------------------------------------------------------
class _Recorder(nn.Module):
    """Logits from each image's mean left-minus-right intensity and its centre; keeps inputs."""

    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))  # model_device() needs a parameter
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        half = x.shape[-1] // 2
        lr = x[..., :half].mean(dim=(1, 2, 3)) - x[..., half:].mean(dim=(1, 2, 3))
        centre = x[..., half - 2 : half + 2, half - 2 : half + 2].mean(dim=(1, 2, 3))
        return torch.stack([lr, centre], dim=1) + self.anchor


def _images(n=5, size=32) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
    images[:, :, : size // 3] += 150  # bright left third: a flip would swap the sign of lr
    return images


def test_tta_is_the_mean_over_its_views_and_never_flips():
    images, mean, std = _images(), [0.5], [0.25]
    model = _Recorder()
    probs = predict_images(model, images, np.arange(5), mean, std, batch_size=8, tta=True)
    assert len(model.inputs) == len(TTA_VIEWS)
    with torch.no_grad():
        per_view = [torch.sigmoid(_Recorder()(x)) for x in model.inputs]
    np.testing.assert_allclose(probs, torch.stack(per_view).mean(0).numpy(), rtol=1e-6)
    plain = predict_images(_Recorder(), images, np.arange(5), mean, std, batch_size=8)
    np.testing.assert_allclose(probs, plain, atol=0.05)  # small views: close to the image
    assert not np.allclose(probs, plain)  # but not the image itself
    x01 = torch.from_numpy(images).unsqueeze(1).float() / 255
    torch.testing.assert_close(model.inputs[0], (x01 - 0.5) / 0.25)  # the first view: itself
    for zoom, sx, sy in TTA_VIEWS:
        assert zoom > 0 and abs(sx) <= 0.05 and abs(sy) <= 0.05
        seen = view(x01, zoom, sx, sy)
        half = seen.shape[-1] // 2
        assert (seen[..., :half].mean() > seen[..., half:].mean()).item()  # left stays left


def test_without_tta_one_forward_pass_per_batch():
    model = _Recorder()
    predict_images(model, _images(n=10), np.arange(10), [0.5], [0.25], batch_size=4)
    assert len(model.inputs) == 3  # 4 + 4 + 2


def test_evaluate_with_tta_scores_the_mean_and_keeps_single_view_thresholds(run):
    from cxrlab.config import EvaluateConfig
    from cxrlab.data.rundata import load_run_data
    from cxrlab.evaluate.metrics import read_predictions
    from cxrlab.evaluate.thresholds import choose_thresholds, load_thresholds
    from cxrlab.evaluate.workflow import evaluate_model
    from cxrlab.models.checkpoint import load_trained

    _fit(run)
    evaluate_model(run, "m", EvaluateConfig(tta=True, bootstrap=20), progress=False)
    data = load_run_data(run)
    trained = load_trained(data, "m")

    def probs(split: str, tta: bool) -> np.ndarray:
        rows = data.rows(split)
        return predict_images(trained.model, data.images, rows, trained.mean, trained.std, tta=tta)

    test = read_predictions(data.paths.evaluation("m", "test").predictions, data.targets)
    np.testing.assert_allclose(test.p, probs("test", True), atol=1e-6)  # the CSV: 6 places
    assert not np.allclose(test.p, probs("test", False))
    val = read_predictions(data.paths.evaluation("m", "val").predictions, data.targets)
    expected = choose_thresholds(val.y, probs("val", False), data.targets)  # single view
    saved = load_thresholds(trained.folder.thresholds, data.targets)
    for target in data.targets:
        assert saved[target]["threshold"] == pytest.approx(expected[target]["threshold"])


def test_export_of_an_ema_run_carries_the_ema_weights(run, tmp_path):
    from safetensors.torch import load_file

    from cxrlab.evaluate.workflow import evaluate_model
    from cxrlab.predict.bundle import WEIGHTS_FILE, export_model

    result = _fit(run, config=_config(train={**TINY["train"], "ema": True}))
    evaluate_model(run, "m", bootstrap=20, progress=False)  # thresholds for the card
    export_model(run, "m", tmp_path / "bundle")
    exported = load_file(tmp_path / "bundle" / WEIGHTS_FILE)
    state = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    for key, value in exported.items():
        assert torch.equal(value, state[EMA_PREFIX + key]), key
