"""Prepares an offline bundle for an accelerator machine that cannot reach the internet.

    python -m experiments.bundle [--python 3.12] [--out data/bundle] [--jpeg PATH]

The accelerator machine of this project has JAX, Flax, optax, Orbax and chex, but nothing else
and no network. The bundle holds what a training run needs besides them:

- ``wheels/``: jaxtyping, ml_collections, Pillow and matplotlib (with small dependencies) for the
  machine's Python, downloaded here with ``pip download`` (packages the machine already has,
  such as NumPy and JAX, are left out);
- ``cifar10-jpeg.tar.gz``: the CIFAR-10 JPEG copy, checksum verified;
- ``run.sh``: installs the wheels and gapjax without touching the machine's JAX, then trains a
  config in time-limited slices (``time_limit_minutes``), so that a command stops with a
  checkpoint before the machine's per-command limit; rerun it to continue.

``out`` is inside ``data/`` (ignored by git): name it in the device tool's ``carry`` list.

Exit status: 0 done; 2 a usage error (bad flags, a missing or wrong JPEG copy, an ``--out``
that is a file or not writable), with one ``error:`` line naming the path; 1 ``pip download``
failed (its own messages say why).
"""

import argparse
import hashlib
import shutil
import stat
import subprocess
import sys
from pathlib import Path

JPEG_SHA256 = "3aee566dde2b7c94db9bc539afcc29dba4217a42de87e426dbc1e588cde582f4"
WHEELS = ("jaxtyping>=0.2.36", "ml_collections>=1.0", "pillow>=10", "matplotlib>=3.8")
ALREADY_THERE = {"numpy", "jax", "jaxlib", "flax", "optax", "orbax_checkpoint", "chex"}

RUN_SH = """#!/usr/bin/env bash
# Run from the repository root on the accelerator machine:
#   bash {out}/run.sh <config> [<workdir>] [minutes]
# e.g. bash {out}/run.sh nin_cifar10_jpeg_aug runs/nin_cifar10_jpeg_aug 9
# Exit status 75: the time limit was reached after a checkpoint; run the same command again.
set -uo pipefail
config=${{1:?config name, e.g. nin_cifar10_jpeg}}
workdir=${{2:-runs/$config}}
minutes=${{3:-9}}
python -m pip install --quiet --no-index --find-links {out}/wheels \
  jaxtyping ml_collections pillow matplotlib
python -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \\
  || export PYTHONPATH="$PWD${{PYTHONPATH:+:$PYTHONPATH}}"
python -c "import jax; print(jax.__version__, jax.devices())"
python -m experiments.train --config "configs/$config.py" --workdir "$workdir" \\
  --config.data_dir={out}/cifar10-jpeg.tar.gz --config.cache_dir={out}/cache \\
  --config.time_limit_minutes="$minutes"
"""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--python", default="3.12", help="the accelerator machine's Python")
    parser.add_argument("--out", default="data/bundle", help="the bundle folder (git-ignored)")
    parser.add_argument("--jpeg", default="../shared/data/cifar10-jpeg.tar.gz")
    parser.add_argument("--no-wheels", action="store_true", help="skip pip download")
    args = parser.parse_args()
    out = Path(args.out)
    try:
        (out / "wheels").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"error: --out {out} cannot be used as a folder ({e.strerror or e})", file=sys.stderr)
        return 2

    jpeg = Path(args.jpeg)
    if not jpeg.exists():
        print(f"error: {jpeg} not found (the CIFAR-10 JPEG copy; see --jpeg)", file=sys.stderr)
        return 2
    if sha256(jpeg) != JPEG_SHA256:
        print(f"error: {jpeg} does not have SHA-256 {JPEG_SHA256}", file=sys.stderr)
        return 2
    target = out / "cifar10-jpeg.tar.gz"
    if not target.exists() or sha256(target) != JPEG_SHA256:
        shutil.copyfile(jpeg, target)

    if not args.no_wheels:
        platforms = ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_28_x86_64"]
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:"]
        command += ["--python-version", args.python, "-d", str(out / "wheels"), *WHEELS]
        for p in platforms:
            command += ["--platform", p]
        if subprocess.run(command).returncode:
            print("error: pip download failed (see its messages above)", file=sys.stderr)
            return 1
        for wheel in (out / "wheels").glob("*.whl"):
            if wheel.name.split("-")[0].lower() in ALREADY_THERE:
                wheel.unlink()

    script = out / "run.sh"
    script.write_text(RUN_SH.format(out=out.as_posix()))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"bundle: {out} ({size / 2**20:.1f} MiB); carry it: [{out.as_posix()!r}]")
    print(f"on the device: bash {out.as_posix()}/run.sh nin_cifar10_jpeg runs/nin_cifar10_jpeg 9")
    return 0


if __name__ == "__main__":
    sys.exit(main())
