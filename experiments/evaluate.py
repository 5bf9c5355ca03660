"""Evaluates a run's checkpoint on a split.

    python -m experiments.evaluate --workdir runs/digits_nin [--split test] [--epoch N]

``--split``: "test" (default), "validation" (the paper's held-out split, CIFAR and SVHN) or
"train". Prints loss, top-1 and top-5 accuracy as JSON (sums over the split, divided once).
Without ``--epoch``, the newest checkpoint that restores is used (a damaged newer one is named
in a warning).

Exit status: 0 done; 2 a usage error (bad flags, no such workdir, checkpoint or data, a damaged
checkpoint or config.json), with one ``error:`` line naming the path; 74 an I/O error.
"""

import argparse
import json
import sys

from experiments import report_error
from gapjax.train import evaluate, load_dataset, restore_model


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", required=True, help="a training run's directory")
    parser.add_argument("--split", default="test", choices=("test", "validation", "train"))
    parser.add_argument("--epoch", type=int, default=None, help="default: the newest checkpoint")
    args = parser.parse_args()
    try:
        model, config = restore_model(args.workdir, epoch=args.epoch)
        config.eval_split = "validation" if args.split == "validation" else "test"
        config.max_train_examples = config.max_eval_examples = 0
        data = load_dataset(config)
    except (OSError, ValueError) as e:
        return report_error(e)
    if args.split == "train":
        images, labels = data.train_images, data.train_labels
    else:
        images, labels = data.eval_images, data.eval_labels
    metrics = evaluate(model, images, labels, batch_size=config.eval_batch_size)
    print(json.dumps({"workdir": args.workdir, "split": args.split, **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
