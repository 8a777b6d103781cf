"""Models: SimpleCNN and timm backbones built by name, weights, normalisation, layer names.

Every model has timm's head API, so downstream code (training, feature extraction,
Grad-CAM) never special-cases an architecture.
"""

from cxrlab.models.factory import (
    COARSE_CAM_SIDE,
    MIN_CAM_SIDE,
    PENULTIMATE,
    RECOMMENDED_MODELS,
    SIMPLE_CNN,
    check_model_name,
    create_model,
    list_layers,
    resolve_cam_layers,
    resolve_normalization,
    stage_sides,
    target_layer_name,
    target_layer_names,
    target_layers,
)
from cxrlab.models.simple_cnn import SimpleCNN
from cxrlab.models.weights import LoadReport, load_lite0_imagenet, load_weights

__all__ = [
    "COARSE_CAM_SIDE",
    "MIN_CAM_SIDE",
    "PENULTIMATE",
    "RECOMMENDED_MODELS",
    "SIMPLE_CNN",
    "LoadReport",
    "SimpleCNN",
    "check_model_name",
    "create_model",
    "list_layers",
    "load_lite0_imagenet",
    "load_weights",
    "resolve_cam_layers",
    "resolve_normalization",
    "stage_sides",
    "target_layer_name",
    "target_layer_names",
    "target_layers",
]
