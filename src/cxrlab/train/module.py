"""The LightningModule: loss, augmentation hook, transfer strategies, optimiser, schedules.

Every epoch's randomness is a function of (seed, epoch, rank): at `on_train_epoch_start`
torch's global RNG (dropout) and the augmentation generator are re-seeded, and the batch
sampler is seeded by `set_epoch`. Resuming from an epoch boundary therefore replays the
remaining epochs exactly as an uninterrupted run would.

Validation AUROC is computed once per epoch on *all* validation predictions (gathered from
every DDP rank, padding duplicates dropped) with scikit-learn. A class whose validation
labels are all one value has no AUROC: it is NaN (not 0.5) with one warning, and the macro
average is over the defined classes only.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import roc_auc_score
from torch import nn

from cxrlab.config import ExperimentConfig, ScheduleConfig
from cxrlab.models.checkpoint import build_network
from cxrlab.train.augment import BatchAugment, mixup, normalize
from cxrlab.train.data import STREAM_AUGMENT, STREAM_TORCH, derive_seed

log = logging.getLogger(__name__)

#: Version of the `cxrlab` block this module writes into checkpoints.
CHECKPOINT_FORMAT = 1


def per_class_auroc(
    y_true: np.ndarray, scores: np.ndarray, targets: Sequence[str]
) -> dict[str, float]:
    """AUROC per target (N, K) -> {name: value}; NaN where a class has one label value only."""
    out: dict[str, float] = {}
    for k, name in enumerate(targets):
        yk = y_true[:, k]
        defined = 0 < yk.sum() < len(yk)
        out[name] = float(roc_auc_score(yk, scores[:, k])) if defined else math.nan
    return out


def macro_auroc(per_class: dict[str, float]) -> float:
    """Mean over the defined (non-NaN) classes; NaN when none is defined."""
    values = [v for v in per_class.values() if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def split_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(head, backbone) parameters; the head is `model.get_classifier()`."""
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    params = list(model.parameters())
    return [p for p in params if id(p) in head_ids], [p for p in params if id(p) not in head_ids]


class ChestXrayClassifier(L.LightningModule):
    """Multi-label classifier of `targets` from grey (B, 1, S, S) uint8 batches.

    Args:
        config: an `ExperimentConfig` as a plain dict (saved as hyper-parameters).
        targets: K target names, in output order.
        image_size: side S of the cached images.
        pos_weight: K BCE positive weights, or None for plain BCE.
        provenance: versions, split hash, run dir: stored in each checkpoint's `cxrlab` block.
    """

    def __init__(
        self,
        config: dict[str, Any],
        targets: Sequence[str],
        image_size: int,
        pos_weight: Sequence[float] | None = None,
        provenance: dict[str, Any] | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = ExperimentConfig.model_validate(config)
        self.targets = list(targets)
        self.model = build_network(self.config, len(self.targets), pretrained=pretrained)
        # The average's weights live in the state dict as `ema.module.*`: checkpoints carry
        # them (resume continues the average), and inference loads them (checkpoint.py).
        self.ema = (
            make_ema(self.model, self.config.train.ema_decay) if self.config.train.ema else None
        )
        from cxrlab.models import resolve_normalization

        mean, std = resolve_normalization(self.model)
        self.mean, self.std = [float(v) for v in mean], [float(v) for v in std]
        self.augment = BatchAugment(self.config.augment, self.mean, self.std)
        weight = torch.tensor(list(pos_weight), dtype=torch.float32) if pos_weight else None
        self.register_buffer("pos_weight", weight, persistent=False)
        self._augment_gen = torch.Generator()
        self._backbone_frozen = False
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._train_sum = torch.zeros(())
        self._train_count = 0
        self._undefined_warned: set[str] = set()
        self.epoch_metrics: dict[str, float] = {}  # the last validation epoch's metrics

    # ---- forward, loss, batches -------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, K) logits

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean BCE over the (B, K) entries; positives weighted by `pos_weight` if set."""
        weight = self.pos_weight.to(logits.device) if self.pos_weight is not None else None
        return F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=weight)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 -> normalised float on the device; random augmentation in training only."""
        x, y, rows = batch
        if self._trainer is not None and self.trainer.training:
            x = self.augment(x, self._augment_gen)
            x, y = mixup(x, y, self.config.augment.mixup, self._augment_gen)
        else:
            x = normalize(x, self.mean, self.std)
        return x, y, rows

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        eps = self.config.train.label_smoothing  # training targets only; val keeps 0/1
        loss = self.loss(self(x), y * (1.0 - eps) + eps / 2 if eps else y)
        self._train_sum = self._train_sum.to(loss.device) + loss.detach() * len(y)
        self._train_count += len(y)
        self.log("loss", loss, prog_bar=True, on_step=True, on_epoch=False, logger=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:  # after the optimiser step; global_step counts steps done
            self.ema.update(self.model, step=self.global_step)

    def inference_model(self) -> nn.Module:
        """The weights validation and inference use: the EMA's when it is on."""
        return self.ema.module if self.ema is not None else self.model

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, rows = batch
        self._val_outputs.append((rows, self.inference_model()(x).float(), y))

    # ---- epoch boundaries ---------------------------------------------------------------
    def on_train_epoch_start(self) -> None:
        seed, epoch, rank = self.config.train.seed, self.current_epoch, self.global_rank
        torch.manual_seed(derive_seed(seed, epoch, STREAM_TORCH, rank))  # dropout etc.
        self._augment_gen.manual_seed(derive_seed(seed, epoch, STREAM_AUGMENT, rank))
        strategy = self.config.train.strategy
        if strategy == "linear-probe":
            self.set_backbone_frozen(True)
        elif strategy == "freeze-then-unfreeze":
            self.set_backbone_frozen(epoch < self.config.train.freeze_epochs)
        self._train_sum = torch.zeros((), device=self.device)
        self._train_count = 0

    def on_validation_epoch_start(self) -> None:
        self._val_outputs = []

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._val_outputs:
            self._val_outputs = []
            return
        rows, logits, y = (torch.cat(parts) for parts in zip(*self._val_outputs, strict=True))
        self._val_outputs = []
        rows, logits, y = self._gather_unique(rows, logits, y)
        per_class = per_class_auroc(y.numpy(), torch.sigmoid(logits).numpy(), self.targets)
        self._warn_undefined(per_class)
        metrics = {
            "val_loss": float(self.loss(logits, y)),
            "val_auroc_macro": macro_auroc(per_class),
            **{f"val_auroc_{name}": value for name, value in per_class.items()},
        }
        train_loss = self._epoch_train_loss()
        if train_loss is not None:
            metrics["train_loss"] = train_loss
        self.epoch_metrics = metrics  # exact floats for metrics.csv (logged ones are float32)
        # identical on every rank after the gather; sync_dist only keeps Lightning from warning
        self.log_dict(metrics, prog_bar=False, logger=False, sync_dist=True)
        self._step_plateau(metrics["val_auroc_macro"])

    def _gather_unique(self, rows: torch.Tensor, logits: torch.Tensor, y: torch.Tensor):
        """All ranks' predictions on the CPU, each cohort row once (DDP pads with repeats)."""
        if self.trainer.world_size > 1:
            rows, logits, y = (self.all_gather(t).flatten(0, 1) for t in (rows, logits, y))
        rows, logits, y = rows.cpu(), logits.cpu(), y.cpu()
        _, first = np.unique(rows.numpy(), return_index=True)
        keep = torch.from_numpy(first)
        return rows[keep], logits[keep], y[keep]

    def _epoch_train_loss(self) -> float | None:
        total = self._train_sum.to(self.device).reshape(1)
        count = torch.tensor([float(self._train_count)], device=self.device)
        if self.trainer.world_size > 1:
            total, count = self.all_gather(total).sum(), self.all_gather(count).sum()
        return float(total.sum() / count.sum()) if float(count.sum()) > 0 else None

    def _warn_undefined(self, per_class: dict[str, float]) -> None:
        for name, value in per_class.items():
            if math.isnan(value) and name not in self._undefined_warned:
                self._undefined_warned.add(name)
                warnings.warn(
                    f"validation AUROC of {name!r} is undefined (NaN): the validation split has"
                    " only one label value for it; the macro AUROC averages the other classes",
                    UndefinedMetricWarning,
                    stacklevel=2,
                )

    # ---- transfer strategies ----------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Before DDP wraps the model: a linear probe's frozen backbone never enters DDP.
        # (BatchNorm goes to eval at the first epoch start, after Lightning's mode check.)
        if self.config.train.strategy == "linear-probe":
            self._set_backbone_grad(False)

    def _set_backbone_grad(self, enabled: bool) -> None:
        for p in split_head(self.model)[1]:
            p.requires_grad_(enabled)

    def set_backbone_frozen(self, frozen: bool) -> None:
        """Freeze (requires_grad off, BatchNorm in eval) or unfreeze every non-head parameter."""
        self._set_backbone_grad(not frozen)
        self._backbone_frozen = frozen
        if self.training:
            self.train(True)  # re-apply the BatchNorm rule below

    def train(self, mode: bool = True) -> ChestXrayClassifier:
        """As `nn.Module.train`, but BatchNorm of a frozen backbone stays in eval mode."""
        super().train(mode)
        if mode and getattr(self, "_backbone_frozen", False):
            head = set(self.model.get_classifier().modules())
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m not in head:
                    m.eval()  # running statistics stay those of the frozen weights
        return self

    # ---- optimiser and schedule -------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        opt_cfg, strategy = self.config.optim, self.config.train.strategy
        head, backbone = split_head(self.model)
        if opt_cfg.layer_decay is not None and strategy != "linear-probe":
            groups = layer_decay_groups(self.model, opt_cfg.lr, opt_cfg.weight_decay,
                                        opt_cfg.layer_decay)  # fmt: skip
        else:
            backbone_lr = opt_cfg.lr * opt_cfg.backbone_lr_mult
            groups = _decay_groups("head", head, opt_cfg.lr, opt_cfg.weight_decay)
            if strategy != "linear-probe":
                groups += _decay_groups("backbone", backbone, backbone_lr, opt_cfg.weight_decay)
        optimizer_cls = torch.optim.AdamW if opt_cfg.name == "adamw" else torch.optim.Adam
        optimizer = optimizer_cls(groups, lr=opt_cfg.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        scheduler = build_scheduler(optimizer, self.config.schedule, total, per_epoch)
        if scheduler is None:
            return optimizer
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config = {"scheduler": scheduler, "interval": "epoch", "monitor": "val_auroc_macro"}
        else:
            config = {"scheduler": scheduler, "interval": "step"}
        return {"optimizer": optimizer, "lr_scheduler": config}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # Plateau steps in on_validation_epoch_end, before the epoch's checkpoint is saved, so
        # a resumed run carries its state; Lightning would step it after the save.
        if not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step()

    def _step_plateau(self, macro: float) -> None:
        if self.trainer.state.fn != TrainerFn.FITTING:
            return  # a stand-alone `trainer.validate` must not move the schedule
        for config in self.trainer.lr_scheduler_configs:
            plateau = isinstance(config.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
            if plateau and not math.isnan(macro):
                config.scheduler.step(macro)

    # ---- checkpoints --------------------------------------------------------------------------
    def checkpoint_info(self) -> dict[str, Any]:
        """What a checkpoint alone needs to rebuild the model and know where it came from."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.config.model.name,
            "model_kwargs": dict(self.config.model.kwargs),
            "drop_rate": self.config.model.drop_rate,
            "in_chans": 1,
            "targets": list(self.targets),
            "image_size": int(self.hparams.image_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "config": self.config.model_dump(mode="json"),
            **(self.hparams.provenance or {}),
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["cxrlab"] = self.checkpoint_info()


def make_ema(model: nn.Module, decay: float) -> nn.Module:
    """timm's weight EMA of `model`: the decay warms up from 0 (1 - (1 + step)^-2/3) to at
    most `decay`, so a short run's average is not held back by the starting weights."""
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=decay, use_warmup=True)
    # timm leaves the copy in eval mode; Lightning switches modes itself (and warns about
    # modules in eval mode at the start of training). It is never run in training.
    return ema.train(model.training)


def layer_decay_groups(
    model: nn.Module, lr: float, weight_decay: float, layer_decay: float
) -> list[dict[str, Any]]:
    """timm's layer-wise groups (by the model's `group_matcher`; the classifier is the top
    layer), each with its own lr = `lr` * its scale. Torch optimisers ignore timm's
    `lr_scale` key, so the scale is applied here; schedulers then scale every group alike."""
    from timm.optim import param_groups_layer_decay

    groups = param_groups_layer_decay(model, weight_decay=weight_decay, layer_decay=layer_decay)
    groups.sort(key=lambda g: -g["lr_scale"])  # the head's first: metrics.csv logs group 0
    return [{**g, "name": f"layer_decay_{i}", "lr": lr * g["lr_scale"]}
            for i, g in enumerate(groups)]  # fmt: skip


def _decay_groups(name: str, params: list[nn.Parameter], lr: float, weight_decay: float):
    """Weight decay on weights only: biases and norm scales (1-D) are not decayed."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"name": name, "params": decay, "lr": lr, "weight_decay": weight_decay})
    if no_decay:
        groups.append(
            {"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}
        )
    return groups


class WarmupCosine:
    """LR factor per step: linear warm-up to 1, then cosine decay to `min_ratio`.

    A class rather than a lambda so `LambdaLR.state_dict` saves its numbers in checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: ScheduleConfig, total_steps: int, per_epoch: int
) -> Any:
    """The scheduler named in `config` (None for "none"); step-wise except plateau."""
    warmup = min(total_steps - 1, round(config.warmup_epochs * per_epoch))
    if config.name == "cosine":
        factor = WarmupCosine(max(0, warmup), total_steps, config.min_lr_ratio)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if config.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=total_steps,
            pct_start=min(0.5, max(1, warmup) / total_steps),
        )
    if config.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience
        )
    return None
