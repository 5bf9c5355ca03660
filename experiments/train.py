"""Trains a configured NIN.

    python -m experiments.train --config configs/<x>.py --workdir runs/<x>

Dotted overrides change any key (``--config.epochs=10``, ``--config.lr=0.05``); unknown keys
are rejected with the closest known key. The run resumes by itself when ``--workdir`` already
holds a checkpoint (from the newest one that restores: a damaged newer one is named in a
warning and set aside in ``checkpoints.unrestorable/``). The workdir gets ``config.json``,
``metrics.jsonl`` (one JSON line per epoch), ``checkpoints/``, ``results.json`` and, with
``config.cam_images > 0``, ``cam.png``. ``--config.quick=True`` shrinks any config to a 2-epoch
smoke test on 512 examples.

Commands of limited length (a 10-minute slot on an accelerator): ``--config.time_limit_minutes=9``
checkpoints and exits with status 75 after the epoch that passes 9 minutes; rerunning the same
command continues, e.g. ``until python -m experiments.train ...; [ $? -ne 75 ]; do :; done``.

Exit status (errors are one line on stderr starting with ``error:``, naming the key or path):
  0: done.
  2: a usage error: an unknown or malformed flag or ``--config.<key>`` override, an invalid
     config value, missing or damaged data, a workdir that is a file or not writable, a workdir
     of another config, or checkpoints none of which restores.
  3: stopped: the loss diverged or the run is stuck at chance (the last good checkpoint stays).
  74: an I/O error while running (e.g. a full disk).
  75: paused at ``config.time_limit_minutes``; run the same command again to continue.

On several hosts, set ``GAPJAX_DISTRIBUTED=1`` (or the usual ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``) on each: ``jax.distributed.initialize()`` runs
first and the mesh spans every device of every host.
"""

import json
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

USAGE = 2  # as argparse: the command line, config, data or workdir must be fixed
DIVERGED = 3
IO_ERROR = 74  # EX_IOERR
PAUSED = 75  # EX_TEMPFAIL: the time limit was reached; rerun to continue

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "configs/<experiment>.py", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "the run's directory (resumed if it exists)")


def _error(message: str, status: int = USAGE) -> int:
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
    return status


def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with one ``error:`` line and status 2 instead of a traceback (an
    unknown ``--config.<key>``) or absl's status 1 (any other flag error)."""
    from gapjax.train import default_config, did_you_mean

    known = default_config()
    for arg in argv[1:]:
        if arg == "--":
            break
        match = re.fullmatch(r"--?config\.([^=.]+)(\..*)?(=.*)?", arg, flags=re.DOTALL)
        if match and match.group(1) not in known:
            key = match.group(1)
            sys.exit(_error(f"unknown config key {key!r} in {arg!r}{did_you_mean(key)}."))
    try:
        rest = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.get("name")  # a config file that failed to load raises here
        return rest
    except flags.Error as e:
        sys.exit(_error(f"{e} (--help lists the flags)"))
    except Exception as e:  # the config file failed to load, or get_config() raised
        sys.exit(_error(f"--config: {type(e).__name__}: {e}"))


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        return _error(f"unexpected arguments {argv[1:]} (flags are --config, --workdir).")
    logging.set_verbosity(logging.WARNING)  # Orbax logs every checkpoint step at INFO
    if os.environ.get("GAPJAX_DISTRIBUTED") == "1" or "JAX_COORDINATOR_ADDRESS" in os.environ:
        import jax

        jax.distributed.initialize()
    from gapjax.train import DivergenceError, quick, run, validate

    config = _CONFIG.value
    if config is None or _WORKDIR.value is None:
        return _error("--config configs/<experiment>.py and --workdir are required.")
    try:
        validate(config)
        if config.quick:
            config = quick(config)
        results = run(config, _WORKDIR.value)
    except (FileNotFoundError, ValueError) as e:
        return _error(e)
    except DivergenceError as e:
        print(f"stopped: {e}", file=sys.stderr)
        return DIVERGED
    except OSError as e:
        return _error(e, IO_ERROR)
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
    app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
