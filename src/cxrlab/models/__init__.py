"""Models: SimpleCNN and timm backbones built by name, weights, normalisation, layer names.

Every model has timm's head API, so downstream code (training, feature extraction,
Grad-CAM) never special-cases an architecture.
"""

from cxrlab.models.factory import (
    PENULTIMATE,
    RECOMMENDED_MODELS,
    SIMPLE_CNN,
    check_model_name,
    create_model,
    list_layers,
    resolve_normalization,
    target_layer,
    target_layer_name,
)
from cxrlab.models.simple_cnn import SimpleCNN
from cxrlab.models.weights import LoadReport, load_lite0_imagenet, load_weights

__all__ = [
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
    "resolve_normalization",
    "target_layer",
    "target_layer_name",
]
