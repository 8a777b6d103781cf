"""The synthetic demo data: chest films drawn in the exact NIH ChestX-ray14 layout.

`write_synthetic_dataset(out_dir)` (`cxrlab synth`, and `cxrlab demo` without a data root)
writes a folder that every stage reads exactly as the real data. Not part of the data layer:
`cxrlab.data` reads data sets and never imports this package. Modules:

- `dataset`: the label model (which findings an image has) and `write_synthetic_dataset`
- `nih_files`: Data_Entry, BBox_List, split lists and PNGs, byte for byte reproducibly
- `parameters`: what a film is drawn from (`Anatomy`, `Shot`, `Sign`) and a sign's `Box`
- `chest`, `signs`, `render`: a chest's geometry, each finding's sign, the film itself
"""

from cxrlab.synth.dataset import SIGN_MODEL, SynthInfo, write_synthetic_dataset
from cxrlab.synth.parameters import (
    NIH_FRAME,
    Anatomy,
    Box,
    Shot,
    Sign,
    sample_anatomy,
    sample_shot,
)
from cxrlab.synth.render import render_chest
from cxrlab.synth.signs import sample_sign, sign_names

__all__ = [
    "NIH_FRAME",
    "SIGN_MODEL",
    "Anatomy",
    "Box",
    "Shot",
    "Sign",
    "SynthInfo",
    "render_chest",
    "sample_anatomy",
    "sample_shot",
    "sample_sign",
    "sign_names",
    "write_synthetic_dataset",
]
