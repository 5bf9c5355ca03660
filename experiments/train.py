"""Trains a configured NIN.

    python -m experiments.train --config configs/<x>.py --workdir runs/<x>

Dotted overrides change any key (``--config.epochs=10``, ``--config.lr=0.05``); unknown keys
are rejected. The run resumes by itself when ``--workdir`` already holds a checkpoint. The
workdir gets ``config.json``, ``metrics.jsonl`` (one JSON line per epoch), ``checkpoints/``,
``results.json`` and, with ``config.cam_images > 0``, ``cam.png``. ``--config.quick=True``
shrinks any config to a 2-epoch smoke test on 512 examples.

Commands of limited length (a 10-minute slot on an accelerator): ``--config.time_limit_minutes=9``
checkpoints and exits with status 75 after the epoch that passes 9 minutes; rerunning the same
command continues, e.g. ``until python -m experiments.train ...; [ $? -ne 75 ]; do :; done``.
Exit status: 0 done, 2 bad config or missing data, 3 diverged, 75 paused.

On several hosts, set ``GAPJAX_DISTRIBUTED=1`` (or the usual ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) on each: ``jax.distributed.initialize()`` runs
first and the mesh spans every device of every host.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

PAUSED = 75  # EX_TEMPFAIL: the time limit was reached; rerun to continue

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/<experiment>.py", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "the run's directory (resumed if it exists)")


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    if os.environ.get("GAPJAX_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in os.environ:
        import jax

        jax.distributed.initialize()
    from gapjax.train import DivergenceError, quick, run, validate

    config = _CONFIG.value
    if config is None or _WORKDIR.value is None:
        raise app.UsageError("--config configs/<experiment>.py and --workdir are required")
    try:
        validate(config)
        if config.quick:
            config = quick(config)
        results = run(config, _WORKDIR.value)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"stopped: {e}", file=sys.stderr)
        return 3
    if not results["complete"]:
        print(
            f"time limit: stopped after epoch {results['epochs']} of {config.epochs} with a "
            "checkpoint; run the same command again to continue",
            file=sys.stderr,
        )
        return PAUSED
    summary = {k: results[k] for k in ("name", "epochs", "eval_split", "error_percent")}
    summary["top1"] = results["eval"]["top1"]
    summary["train_wall_s"] = round(results["train_wall_s"], 1)
    print(json.dumps(summary))
    if config.cam_images:
        from experiments.cam import render

        path = render(_WORKDIR.value, images=config.cam_images)
        print(f"class activation maps: {path}")
    return 0


if __name__ == "__main__":
    app.run(lambda argv: sys.exit(main(argv)))
