"""Runs or collects the paper-table configs; prints paper vs ours and plots training curves.

    python -m experiments.reproduce --workdir runs [--run] [--configs nin_cifar10 ...]

For each config (default: every paper-table config) the run lives in ``<workdir>/<config>``;
with ``--run`` missing or unfinished runs are trained first (resuming where they stopped).
Prints a markdown table (paper error, ours, epochs, hardware, wall time, commit) and writes
``<workdir>/curves.png`` (test error per epoch) and ``<workdir>/results.md``.

Exit status: 0 done; 2 a usage error (bad flags, an unknown config, a workdir that is a file,
or a run that could not start: its ``error:`` line names the config and the key or path; the
table is still printed); 3 a run diverged; 74 an I/O error.
"""

import argparse
import importlib
import json
import sys
from pathlib import Path

# Test error (%) reported in the paper (REFERENCE.md section 3).
PAPER = {
    "digits_nin": None,
    "nin_cifar10": 10.41,
    "nin_cifar10_aug": 8.81,
    "nin_cifar10_fc": 11.59,
    "nin_cifar10_fc_dropout": 10.88,
    "nin_cifar10_caffe": 10.4,
    "nin_cifar10_jpeg": 10.41,
    "nin_cifar10_jpeg_aug": 8.81,
    "nin_cifar100": 35.68,
    "nin_svhn": 2.35,
    "nin_mnist": 0.47,
}


def load_config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def table(workdir: Path, names: list[str]) -> str:
    rows = [
        "| config | paper error (%) | ours (%) | epochs | hardware | train time | commit |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in names:
        results_path = workdir / name / "results.json"
        paper = PAPER.get(name)
        paper_cell = "-" if paper is None else f"{paper:.2f}"
        if not results_path.exists():
            rows.append(f"| {name} | {paper_cell} | not run | | | | |")
            continue
        r = json.loads(results_path.read_text())
        env = r.get("environment", {})
        minutes = r["train_wall_s"] / 60
        rows.append(
            f"| {name} | {paper_cell} | {r['error_percent']:.2f} ({r['eval_split']}) | "
            f"{r['epochs']} | {env.get('device_kind', '?')} | {minutes:.1f} min | "
            f"{env.get('commit', '')} |"
        )
    return "\n".join(rows)


def plot(workdir: Path, names: list[str]) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for name in names:
        log = workdir / name / "metrics.jsonl"
        if not log.exists():
            continue
        records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        points = [(r["epoch"], 100 * (1 - r["eval_top1"])) for r in records if "eval_top1" in r]
        if points:
            ax.plot(*zip(*points, strict=True), label=name)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("evaluation error (%)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = workdir / "curves.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", default="runs", help="the folder holding one run per config")
    parser.add_argument("--configs", nargs="*", default=[n for n in PAPER if n != "digits_nin"])
    parser.add_argument("--run", action="store_true", help="train missing or unfinished runs")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    unknown = [n for n in args.configs if n not in PAPER]
    if unknown:
        print(f"error: unknown configs {unknown}; choose from {sorted(PAPER)}", file=sys.stderr)
        return 2
    if workdir.exists() and not workdir.is_dir():
        print(f"error: --workdir {workdir} is an existing file, not a directory", file=sys.stderr)
        return 2
    status = 0
    if args.run:
        from gapjax.train import DivergenceError, run

        for name in args.configs:
            try:
                run(load_config(name), workdir / name)
            except (FileNotFoundError, ValueError) as e:
                print(f"error: {name}: {e}", file=sys.stderr)
                status = status or 2
            except DivergenceError as e:
                print(f"stopped: {name}: {e}", file=sys.stderr)
                status = status or 3
    markdown = table(workdir, args.configs)
    print(markdown)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "results.md").write_text(markdown + "\n")
        curves = plot(workdir, args.configs)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 74
    if curves:
        print(f"training curves: {curves}")
    return status


if __name__ == "__main__":
    sys.exit(main())
