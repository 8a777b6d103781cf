"""Single-image CPU latency per model family, torch vs onnxruntime, one thread.

    HF_HUB_OFFLINE=1 python bench/bench_serve.py --size 224 --repeats 50

Untrained networks of each family (weights do not change the cost), exported with
`cxrlab.predict.bundle.export_onnx`; the input is the normalised (1, 1, S, S) tensor that
`Predictor` feeds both runtimes. Prints p50/p95 in ms and the torch/onnxruntime ratio measured
in the same run (the machine is shared and noisy), and the process RSS at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrlab.models.factory import create_model
from cxrlab.models.inference import to_model_input
from cxrlab.predict.bundle import export_onnx

FAMILIES = ("simple_cnn", "resnet18", "efficientnet_lite0", "efficientnet_b0", "densenet121")


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered) * 1e3, ordered[int(0.95 * (len(ordered) - 1))] * 1e3


def bench(family: str, size: int, repeats: int, folder: Path) -> dict:
    import onnxruntime as ort

    model = create_model(family, 14, in_chans=1).eval()
    path = export_onnx(model, size, folder / f"{family}.onnx")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).integers(0, 256, (1, size, size), dtype=np.uint8)
    x = to_model_input(image, [0.5], [0.25])
    out = {}
    with torch.inference_mode():
        for name, run in (
            ("torch", lambda: model(x)),
            ("onnxruntime", lambda: session.run(None, {"image": x.numpy()})),
        ):
            for _ in range(3):
                run()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            out[name] = percentiles(times)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--families", default=",".join(FAMILIES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"single image, {args.size} px, 1 CPU thread, {args.repeats} repeats (ms)")
    print(
        f"{'family':20s} {'torch p50':>10s} {'p95':>7s} {'ort p50':>9s} {'p95':>7s} {'ratio':>6s}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for family in args.families.split(","):
            r = bench(family, args.size, args.repeats, Path(tmp))
            (tp50, tp95), (op50, op95) = r["torch"], r["onnxruntime"]
            print(
                f"{family:20s} {tp50:10.1f} {tp95:7.1f} {op50:9.1f} {op95:7.1f} {tp50 / op50:6.2f}"
            )
    try:
        import psutil

        print(f"process RSS: {psutil.Process().memory_info().rss / 2**20:.0f} MiB")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
