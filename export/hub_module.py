"""Export an ImageNet backbone as a TF-Hub-format SavedModel.

    python -m export.hub_module --arch efficientnet-lite0|efficientnet-lite1|efficientnet-lite2 \\
        --kind feature_vector|classification --out DIR

Accuracy of the classification modules on real ImageNet photos: ``benchmarks/backbone_accuracy.py``.

The module follows TF-Hub's common image-module interface: call it on float32 ``[batch, S, S, 3]`` with
values in [0, 1] (it normalises inside; S = 224, 240 or 260 for Lite0, Lite1, Lite2, the sizes their
accuracy was measured at); ``feature_vector`` returns ``[batch, 1280]``, ``classification`` returns
``[batch, 1000]`` logits in the standard ImageNet-1k order. It loads with plain ``tensorflow_hub.load(DIR)``
or ``tf.saved_model.load(DIR)``, without chtn installed.
"""

from __future__ import annotations

import argparse
import sys

from chtn_tf.backbones.registry import LITE_IMAGE_SIZES

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.hub_module", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=tuple(LITE_IMAGE_SIZES), default="efficientnet-lite0")
    parser.add_argument("--kind", choices=("feature_vector", "classification"), default="feature_vector")
    parser.add_argument("--out", required=True, help="folder to write the SavedModel to (replaced atomically)")
    args = parser.parse_args(argv)

    from chtn_tf.backbones.efficientnet_lite import write_hub_module

    write_hub_module(args.out, arch=args.arch, kind=args.kind)
    print(f"wrote {args.arch} {args.kind} module ({LITE_IMAGE_SIZES[args.arch]} px input) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
