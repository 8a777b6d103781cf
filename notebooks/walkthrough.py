# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # cxrlab walkthrough: a chest X-ray study from cohort to Grad-CAM
#
# This notebook runs the whole study of `make demo` through cxrlab's Python API, one stage per
# cell: a synthetic data set in the NIH ChestX-ray14 layout, a patient-wise split with its
# leakage check, two models (a small CNN trained from scratch and an ImageNet-pretrained
# EfficientNet-Lite0), their metrics beside trivial baselines, an unsupervised look at what
# the features learned, and Grad-CAM maps scored against the drawn boxes.
#
# Every function has `help()` (try `help(cxrlab.train)`); each writes the same files as its
# CLI twin (`cxrlab train`, ...) into one run directory, so you can stop here and continue in
# a shell. *Research use only*: these models are not medical devices.

# %%
# On Colab: install cxrlab (set CXRLAB_SOURCE to where your copy of the repository lives).
import importlib.util
import subprocess
import sys

CXRLAB_SOURCE = "git+https://github.com/OWNER/cxrlab.git"
if "google.colab" in sys.modules and importlib.util.find_spec("cxrlab") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", CXRLAB_SOURCE], check=True)

import torch  # after the install

import cxrlab

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
print(f"cxrlab {cxrlab.__version__}, torch {torch.__version__}, running on {DEVICE}")
if DEVICE == "cuda":
    print(torch.cuda.get_device_name(0))

# %% [markdown]
# ## Settings
# The demo (`configs/demo.yaml`) uses 300 synthetic patients cached at 112 px and trains for
# 4–6 epochs, fine-tuning all of Lite0. To run in a few minutes on a laptop CPU this
# notebook uses **100 patients at 64 px, 3 epochs, and trains only Lite0's new head** (a
# linear probe on its ImageNet features); its numbers are noisier than the demo's. On a GPU,
# raise them (`PATIENTS = 300`, `IMAGE_SIZE = 112`, `EPOCHS = 6`, `LITE0_STRATEGY = "full"`).

# %%
import logging
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported first: it sets its own log level)
from IPython.display import display

logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner on every fit

PATIENTS = 100  # the demo: 300
IMAGE_SIZE = 64  # cached side in px; the demo: 112
EPOCHS = 3  # the demo: 6 (SimpleCNN) and 4 (Lite0)
LITE0_STRATEGY = "linear-probe"  # only the new head learns; the demo: "full"
BOOTSTRAP = 200  # patient-bootstrap resamples for every CI; real studies use 1000
PATHOLOGIES = ["Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Pneumothorax"]
WORK = Path("walkthrough")

# %% [markdown]
# ## 1. Data: a synthetic data set in the NIH layout
# The generator draws chest-like images with boxed signs of seven findings and writes the
# same files as the NIH download (`Data_Entry_2017.csv`, `BBox_List_2017.csv`, the split
# lists, PNGs), so everything below works unchanged on the real data.

# %%
data = cxrlab.synth(WORK / "data", patients=PATIENTS, seed=0, overwrite=True)
print(f"{data.images} images of {data.patients} patients, {data.boxes} boxes")
data.label_counts

# %% [markdown]
# ## 2. Cohort and split, with the leakage check
# Images are split **by patient**: all images of one person land in one split, otherwise a
# model could be tested on a near-copy of a training image. `prepare` refuses any split in
# which a patient appears twice, and caches every image once as a small grey square.

# %%
run = cxrlab.prepare(
    data.root,
    WORK / "run",
    pathologies=PATHOLOGIES,
    test=0.2,
    image_size=IMAGE_SIZE,
    progress=False,
)
print(f"patients in more than one split: {run.patient_overlap} (leakage check passed)")
run.splits

# %%
run.cohort.head()

# %% [markdown]
# ## 3. Training
# SimpleCNN learns from scratch; EfficientNet-Lite0 starts from ImageNet weights (shipped with
# cxrlab, no download) and here keeps them, training only a new 5-class head. Each epoch is
# validated on the val split; the best epoch by validation macro AUROC is kept. The curves
# show whether the model still improves or already overfits.

# %%
cnn = cxrlab.train(
    run,
    "simple_cnn",
    model_kwargs={"base_width": 16, "depth": 4, "convs_per_block": 2},
    epochs=EPOCHS,
    lr=3e-3,
    accelerator="auto",
    progress=False,
)
lite = cxrlab.train(
    run,
    "efficientnet_lite0",
    pretrained=True,
    strategy=LITE0_STRATEGY,
    epochs=EPOCHS,
    progress=False,
)
cnn.history

# %%
cnn.figure("training")

# %% [markdown]
# ## 4. Metrics beside baselines
# Thresholds are chosen on **validation** only, then applied to test. AUROC is beside each
# class's count of positives; average precision (AP) is beside prevalence, its chance level;
# every interval is a 95% bootstrap over *patients*.

# %%
evaluations = {
    model: cxrlab.evaluate(run, model, bootstrap=BOOTSTRAP, device=DEVICE, progress=False)
    for model in ("simple_cnn", "efficientnet_lite0")
}
evaluations["efficientnet_lite0"].table[["n_pos", "prevalence", "AUROC", "AP", "F1"]]

# %% [markdown]
# Multi-label accuracies look high for any model, because most labels are negative: they are
# only meaningful beside the **all-negative predictor** (a "model" that always says "no
# finding") on the same images.

# %%
evaluations["simple_cnn"].baseline

# %% [markdown]
# ROC curves per class (the diagonal is chance) and the confusion matrices at the
# thresholds chosen on validation:

# %%
evaluations["efficientnet_lite0"].figure("roc")

# %%
evaluations["efficientnet_lite0"].figure("confusion")

# %% [markdown]
# ## 5. Comparing the two models
# Both models are scored on the same test images; the paired bootstrap over patients says
# whether the difference in AUROC is larger than the noise of a test set this small.

# %%
comparison = cxrlab.compare(run, bootstrap=BOOTSTRAP)
display(comparison.table)
comparison.pairs["efficientnet_lite0 vs simple_cnn"]

# %%
comparison.figure("auroc_bars")

# %% [markdown]
# ## 6. What did the model learn? PCA and K-Means
# The penultimate features of the test images are projected with PCA and clustered with
# K-Means (k chosen by silhouette). The question asked honestly: do the clusters follow the
# **pathology**, or acquisition **metadata** (view, sex, age) the model also sees?

# %%
analysis = cxrlab.analyze(run, "efficientnet_lite0", device=DEVICE, progress=False)
analysis  # shows the summary: the answer first, every claim with its number

# %%
analysis.figure("pca_scatter")

# %% [markdown]
# ## 7. Where does the model look? Grad-CAM
# Grad-CAM highlights the image regions that raised a class's score, here relative to a
# reference film (the mean over the training images without any finding), so the map shows
# what this image adds rather than anatomy every film carries. The pointing game asks
# whether the map's peak falls inside the drawn box, beside a random point's hit rate. The
# gallery shows the most confident true and false positives and the missed positives.

# %%
explanation = cxrlab.explain(run, "simple_cnn", per_group=2, device=DEVICE, progress=False)
explanation.localization[["n", "hit_rate", "random_point_hit_rate", "mean_iou"]]

# %% [markdown]
# Pointing at the box is not the same as driving the call. Deletion blurs the map's top
# pixels step by step (the probability should fall fast: low area); insertion restores them
# into a blurred film (it should rise fast: high area); both beside a random map as coarse as
# the CAM, on a few true positives per finding. The verdict needs the 95% interval over
# patients to exclude zero, so a handful of images says "not shown".

# %%
curves = ["deletion", "deletion_random", "deletion_verdict"]
explanation.faithfulness[["n", *curves, *(c.replace("deletion", "insertion") for c in curves)]]

# %%
explanation.figure("Effusion")

# %% [markdown]
# ## 8. The report
# One self-contained HTML page with every table and figure above and a model card.

# %%
page = cxrlab.report(run)
print(f"open {page.resolve()} in a browser")
