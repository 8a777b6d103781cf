"""The predict stage: a trained model, made self-sufficient, run on new images.

- `card.py`: `ModelCard`, everything a prediction needs besides the weights (targets, image
  size, normalisation, thresholds and their rule, temperature, test metrics, provenance).
- `bundle.py`: the export folder (`model.safetensors`, `model.json`, optional `model.onnx`),
  `export_model` and `load_bundle` (an exported folder or RUN_DIR/models/NAME).
- `predictor.py`: `Predictor`, thread-safe probabilities and Grad-CAM for uint8 images,
  with the torch or onnxruntime runtime.
- `files.py` and `workflow.py`: `cxrlab predict` on files, folders and globs.
"""
