"""Renders class activation maps of a trained model as a PNG grid.

    python -m experiments.cam --workdir runs/digits_nin [--images 16] [--out cam.png]

For each of the first ``--images`` images of the run's evaluation split: the image, the CAM of
the predicted class overlaid (NIN's GAP head: the class map itself, upsampled bilinearly to the
input size), and the predicted and true classes.

Exit status: 0 done; 2 a usage error (bad flags, no such workdir or checkpoint, missing data,
a damaged checkpoint), with one ``error:`` line naming the path; 74 an I/O error (e.g. the
output cannot be written).
"""

import argparse
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from experiments import report_error
from gapjax.cam import class_activation_maps
from gapjax.train import load_dataset, load_splits, restore_model


def render(workdir: str | Path, *, images: int = 16, out: str | Path | None = None) -> Path:
    """Writes the CAM grid of a run's model and returns its path (default ``workdir/cam.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workdir = Path(workdir)
    model, config = restore_model(workdir)
    config.max_eval_examples = 0  # the first images of the split, shown as stored
    splits = load_splits(config)
    dataset = load_dataset(config, splits=splits)
    raw_eval = splits[1].images[:images]  # unprocessed, for display
    x = jnp.asarray(dataset.eval_images[:images])
    logits, extra = model(x, return_intermediates=True)
    predicted = np.asarray(jnp.argmax(logits, -1))
    maps = class_activation_maps(extra["maps"], size=x.shape[1:3])
    cams = np.take_along_axis(np.asarray(maps), predicted[:, None, None, None], -1)[..., 0]
    names = dataset.class_names or tuple(str(i) for i in range(dataset.num_classes))
    cols = 4
    rows = -(-len(x) // cols)
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.6, rows * 1.8), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(len(x)):
        image = raw_eval[i]
        shown = image[..., 0] if image.shape[-1] == 1 else image
        cmap = "gray" if image.shape[-1] == 1 else None
        a, b = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        a.imshow(shown, cmap=cmap, interpolation="nearest")
        truth = names[int(dataset.eval_labels[i])]
        a.set_title(f"true {truth}", fontsize=8)
        b.imshow(shown, cmap=cmap, interpolation="nearest")
        b.imshow(cams[i], cmap="jet", alpha=0.5, interpolation="bilinear")
        ok = "" if predicted[i] == dataset.eval_labels[i] else " (x)"
        b.set_title(f"pred {names[predicted[i]]}{ok}", fontsize=8)
    fig.suptitle(f"{config.name}: class activation maps of the predicted class", fontsize=10)
    fig.tight_layout()
    out = workdir / "cam.png" if out is None else Path(out)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a training run's directory")
    parser.add_argument("--images", type=int, default=16, help="how many evaluation images")
    parser.add_argument("--out", default=None, help="the PNG to write (default workdir/cam.png)")
    args = parser.parse_args()
    if args.images < 1:
        parser.error(f"--images must be at least 1, got {args.images}")
    try:
        print(render(args.workdir, images=args.images, out=args.out))
    except (OSError, ValueError) as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
