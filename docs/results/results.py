"""Keep the reproduction tables of docs/RESULTS.md in step with the per-run summaries.

    python docs/results/results.py add outputs/<run> --experiment mnist_hinton \\
        --variant distilled --command "distill student --recipe mnist_hinton ..."
    python docs/results/results.py tables          # rewrites the tables in docs/RESULTS.md
    python docs/results/results.py experiments     # the experiments ``add`` accepts
    python docs/results/results.py sweep outputs/<sweep> [--out <csv> --command "..."]

``add`` copies the few numbers a table needs from a finished run's ``summary.json`` (and its
``environment.json`` and resolved ``recipe.yaml``) into
``docs/results/<experiment>/<variant>-s<seed>.json``, and its per-epoch metrics into
``<variant>-s<seed>.epochs.csv`` beside it: never weights. ``tables`` groups them per
experiment into teacher / baseline / distilled rows (mean and sample standard deviation over
seeds, the paired per-seed difference distilled minus baseline) beside the published figures,
and replaces the text between the ``<!-- tables -->`` markers. ``sweep`` prints the T and alpha
that a finished validation sweep chooses (as ``distill sweep`` does: the best mean validation
accuracy) and can store its validation figures as CSV; the test figures stay out of it, since
the choice must not be made on them.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from distill.recipe import read_yaml
from distill.teacher import read_summary
from distill.tracking import METRICS, MetricsLog

HERE = Path(__file__).resolve().parent
RESULTS_MD = HERE.parent / "RESULTS.md"
START, END = "<!-- tables:start -->", "<!-- tables:end -->"
VARIANTS = ("teacher", "baseline", "distilled", "distilled_val", "distilled_plain")
OPTIONAL = {"distilled_val", "distilled_plain"}  # a row only when runs exist
# each gets a paired difference to the baseline
COMPARED = ("distilled", "distilled_val", "distilled_plain")

# how each experiment is reported, and the published figures beside it
EXPERIMENTS = {
    "mnist_hinton": {
        "title": "MNIST, Hinton et al. 2015 (test errors out of 10000, lower is better)",
        "unit": "errors",
        "n_test": 10000,  # add() refuses a run tested on another number of images
        "published": {"teacher": "67", "baseline": "146",
                      "distilled": "74 (the paper's, without jitter)",
                      "distilled_val": "74 (the paper's, without jitter)", "distilled_plain": "74"},
        "labels": {"distilled": "distilled (jittered), alpha 0.9",
                   "distilled_val": "distilled (jittered), alpha chosen on validation",
                   "distilled_plain": "distilled (no jitter, as published)"},
    },
    # the first teacher recipe's runs, kept for the record; its baselines are mnist_hinton's
    # (a baseline student never sees its teacher), so the paired differences use those
    "mnist_hinton_lr0.05": {
        "title": "MNIST, the first teacher recipe (Nesterov lr 0.05), superseded "
                 "(test errors out of 10000)",
        "baselines_from": "mnist_hinton",
    },
    "cifar10_jpeg_resnet": {
        "title": "CIFAR-10 (JPEG q75), ResNet-56 -> ResNet-20 (test accuracy %)",
        "unit": "accuracy",
        "n_test": 10000,
        "published": {"teacher": "~93 (original images)", "baseline": "~91 (original)",
                      "distilled": "~91.5 (original)"},
    },
    # the same students with teachers trained 60 epochs instead of 30 (TEACHER_EPOCHS=60 of
    # cifar10_jpeg.sh); the baselines see no teacher, so they are the table above's
    "cifar10_jpeg_resnet_e60": {
        "title": "CIFAR-10 (JPEG q75), ResNet-56 teachers trained 60 epochs -> ResNet-20 "
                 "(test accuracy %)",
        "baselines_from": "cifar10_jpeg_resnet",
        "teacher_epochs": 60,  # add() refuses a teacher (or a student of one) trained otherwise
    },
}


def _inherit(spec: dict) -> dict:
    """An experiment that borrows another's baselines reports like it (unit, published
    figures, row labels), its baseline row relabelled; any other is returned as it is."""
    if "baselines_from" not in spec:
        return spec
    base = EXPERIMENTS[spec["baselines_from"]]
    return {**base, **spec, "labels": {**base.get("labels", {}),
                                       "baseline": "baseline (the runs of the table above)"}}


EXPERIMENTS = {name: _inherit(spec) for name, spec in EXPERIMENTS.items()}


def add(run: Path, experiment: str, variant: str, command: str, results: Path = HERE) -> Path:
    """Store one finished run's figures; returns the JSON file written."""
    summary = read_summary(run)
    if summary is None:
        raise FileNotFoundError(f"{run}: not a finished run (no readable summary.json)")
    _check_fits(run, summary, experiment, variant)
    env_path = run / "environment.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    record = {
        "experiment": experiment, "variant": variant, "run": summary["run"],
        "seed": summary["seed"], "epochs": summary["epochs"],
        "test_accuracy": summary["test"]["accuracy"], "test_errors": summary["test"]["errors"],
        "n_test": summary["test"]["n"], **_wall(run, summary),
        "kd": summary.get("kd"), "best_on_val": summary.get("best_on_val"),
        "device": env.get("device"), "gpu": env.get("gpu"), "cpu_count": env.get("cpu_count"),
        "git_commit": env.get("git_commit"), "git_dirty": env.get("git_dirty"),
        "command": command, "recipe": _recipe(run),
    }
    out = results / experiment / f"{variant}-s{summary['seed']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    _write_epochs(run, out.with_suffix(".epochs.csv"))
    return out


def _check_fits(run: Path, summary: dict, experiment: str, variant: str) -> None:
    """Refuse a run the experiment's table would misreport: one tested on a subset of the
    test images (its errors would read as out of 10000), a baseline where the baselines are
    borrowed (the borrowed ones would silently stand in its place), or a teacher trained for
    other than the experiment's ``teacher_epochs`` (for a student: its teacher's epochs, read
    from the teacher run its summary names; see :func:`_teacher_of`)."""
    spec = EXPERIMENTS[experiment]
    n_test = summary["test"]["n"]
    if spec.get("n_test") is not None and n_test != spec["n_test"]:
        raise ValueError(f"{run}: tested on {n_test} images; {experiment} reports runs "
                         f"tested on all {spec['n_test']} (a data.test_subset run?)")
    if variant == "baseline" and "baselines_from" in spec:
        raise ValueError(f"{experiment} takes its baselines from {spec['baselines_from']}; "
                         f"record {run} there")
    want = spec.get("teacher_epochs")
    if want is None or variant == "baseline":
        return
    if variant == "teacher":
        teacher, epochs = run, summary["epochs"]
    else:
        teacher, epochs = _teacher_of(run, summary)
        if teacher is None:
            info = summary.get("teacher") or {}
            sha = info.get("sha256")
            weights = f" with the weights it learnt from (sha256 {sha[:12]})" if sha else ""
            raise ValueError(f"{run}: its teacher ({info.get('location') or 'none named'}) is "
                             f"not a finished run here{weights}, so its {want} epochs cannot "
                             f"be checked")
    if epochs != want:
        raise ValueError(f"{teacher}: trained {epochs} epochs; {experiment} holds teachers "
                         f"trained {want}")


def _teacher_of(run: Path, summary: dict) -> tuple[Path | None, int | None]:
    """A student's teacher run and its epochs: the folder its summary names (relative to the
    working folder it ran in), else the folder of that name in the same layout beside the
    student's (``<out>/cifar-teachers/<name>`` for ``<out>/cifar-students/<student>``: runs
    brought back from another machine); a folder whose weights are not the ones the student
    learnt from (sha256) does not count. (None, None) when none is found."""
    info = summary.get("teacher") or {}
    if not info.get("location"):
        return None, None
    named = Path(info["location"])
    for folder in (named, run.parent.parent / named.parent.name / named.name):
        found = read_summary(folder)
        if found and info.get("sha256") in (None, found.get("weights_sha256")):
            return folder, found["epochs"]
    return None, None


def _recipe(run: Path) -> dict | None:
    """The run's resolved recipe (its ``recipe.yaml``, every field after ``--set`` and flags),
    so the record rebuilds the run even where the command relied on recipe defaults that a
    later commit changed."""
    path = run / "recipe.yaml"
    return read_yaml(path) if path.is_file() else None


def _write_epochs(run: Path, out: Path) -> None:
    """The run's per-epoch metrics (``metrics.jsonl``: losses, validation accuracy, lr, epoch
    seconds) as CSV beside its record, so figures quoted per epoch can be checked."""
    rows = MetricsLog(run / METRICS).read()
    if not rows:
        return
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _wall(run: Path, summary: dict) -> dict:
    """The run's wall time over all its segments, and how many times it was resumed. A
    checkpoint older than the wall-time record (a resume whose ``wall_seconds_before`` is None
    or missing) leaves only the last segment in the summary; the epochs' own times, summed from
    metrics.jsonl, then stand for the whole run (setup and evaluation not included)."""
    resumes = summary.get("resumes") or []
    if any(r.get("wall_seconds_before") is None for r in resumes):
        lines = (run / "metrics.jsonl").read_text().splitlines()
        epochs = sum(json.loads(line)["epoch_seconds"] for line in lines if line.strip())
        return {"wall_seconds": round(epochs, 2), "wall_from": "epoch times",
                "resumes": len(resumes)}
    return {"wall_seconds": summary["wall_seconds"], "resumes": len(resumes)}


def _wall_cell(record: dict) -> str:
    """The runs table's wall cell: seconds, with how they were counted when not plainly."""
    notes = [f"resumed {record['resumes']}x"] if record.get("resumes") else []
    if record.get("wall_from"):
        notes.insert(0, f"sum of {record['wall_from']}")
    return f"{record['wall_seconds']:.0f}" + (f" ({', '.join(notes)})" if notes else "")


def load(results: Path = HERE) -> dict[str, list[dict]]:
    """Every stored record, per experiment."""
    found: dict[str, list[dict]] = {}
    for path in sorted(results.glob("*/*.json")):
        record = json.loads(path.read_text())
        found.setdefault(record["experiment"], []).append(record)
    return found


def _value(record: dict, unit: str) -> float:
    return record["test_errors"] if unit == "errors" else 100 * record["test_accuracy"]


def _shown(value: float, unit: str) -> str:
    """A seed's figure: whole test errors, or accuracy % to two decimals (87.50, not 87.5)."""
    return f"{value:g}" if unit == "errors" else f"{value:.2f}"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "not measured"
    if len(values) == 1:  # one seed has no spread to show
        return f"{values[0]:.2f} (n=1)"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f} (n={len(values)})"


def table(experiment: str, records: list[dict], borrowed: list[dict] = ()) -> str:
    """One experiment's Markdown table, with the paired difference and the runs' details.
    ``borrowed`` runs (another experiment's baselines) count in the rows but are not listed."""
    spec = EXPERIMENTS[experiment]
    unit = spec["unit"]
    labels = spec.get("labels", {})
    by = {v: {r["seed"]: r for r in [*records, *borrowed] if r["variant"] == v}
          for v in VARIANTS}
    shown = [v for v in VARIANTS if v not in OPTIONAL or by[v]]
    lines = [f"### {spec['title']}", "",
             "| | mean ± std over seeds | per seed | published |", "|---|---|---|---|"]
    for v in shown:
        values = [_value(r, unit) for _, r in sorted(by[v].items())]
        per_seed = ", ".join(f"s{s}: {_shown(_value(r, unit), unit)}"
                             for s, r in sorted(by[v].items()))
        lines.append(f"| {labels.get(v, v)} | {_mean_std(values)} | {per_seed or '-'} | "
                     f"{spec['published'].get(v, '-')} |")
    for v in (c for c in COMPARED if c in shown):
        paired = sorted(set(by["baseline"]) & set(by[v]))
        diffs = [_value(by[v][s], unit) - _value(by["baseline"][s], unit) for s in paired]
        lines.append(f"| {labels.get(v, v)} - baseline (paired) | {_mean_std(diffs)} | "
                     + (", ".join(f"s{s}: {d:+.2f}" for s, d in zip(paired, diffs)) or "-")
                     + " | |")
    lines += ["", "| run | seed | epochs | T | alpha | wall (s) | device | command |",
              "|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (VARIANTS.index(r["variant"]), r["seed"])):
        kd = r.get("kd") or {}
        lines.append(f"| {r['variant']} | {r['seed']} | {r['epochs']} | {kd.get('T', '-')} | "
                     f"{kd.get('alpha', '-')} | {_wall_cell(r)} | "
                     f"{_machine(r)} | `{r['command']}` |")
    return "\n".join(lines)


def _machine(record: dict) -> str:
    if record.get("gpu"):
        return record["gpu"]
    if record.get("device") == "cpu" and record.get("cpu_count"):
        return f"CPU ({record['cpu_count']} cores)"
    return record.get("device") or "?"


def tables(results: Path = HERE, markdown: Path = RESULTS_MD) -> str:
    """Rewrite the block between the markers of ``markdown``; returns the new block."""
    found = load(results)
    parts = []
    for experiment, spec in EXPERIMENTS.items():
        if experiment in found:
            shared = spec.get("baselines_from")
            borrowed = [r for r in found.get(shared, []) if r["variant"] == "baseline"]
            parts.append(table(experiment, found[experiment], borrowed))
        else:
            parts.append(f"### {EXPERIMENTS[experiment]['title']}\n\nNot measured yet.")
    block = "\n\n".join(parts)
    text = markdown.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{markdown}: the markers {START} and {END} are missing")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    markdown.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    return block


SWEEP_COLUMNS = ["T", "alpha", "seed", "epochs", "val_accuracy", "best_val_accuracy",
                 "wall_seconds", "command"]


def sweep(sweep_dir: Path, out: Path | None = None, command: str = "",
          plot: Path | None = None, curves: Path | None = None) -> tuple[float, float]:
    """The (T, alpha) a finished sweep chooses on validation; with ``out``, its validation
    figures (one row per cell and seed, no test column) written there as CSV; with ``plot``,
    the validation-accuracy heatmap of the grid (the chosen cell boxed) as a PNG; with
    ``curves``, each cell's validation accuracy per epoch as a PNG."""
    from distill.sweep import SWEEP_FILE, aggregate, best_cell, grid_size, read_results
    from distill.sweep_plots import plot_heatmap, plot_val_curves

    rows = read_results(sweep_dir)
    size = grid_size(json.loads((sweep_dir / SWEEP_FILE).read_text()))
    if len(rows) < size:
        raise SystemExit(f"{sweep_dir}: {len(rows)} of {size} students finished; run the "
                         f"sweep to the end before choosing")
    best = best_cell(aggregate(rows))
    if best is None:
        raise SystemExit(f"{sweep_dir}: no validation accuracy (data.val_size is 0); "
                         f"nothing to choose on")
    epochs = {r["run"]: json.loads((sweep_dir / r["run"] / "summary.json").read_text())["epochs"]
              for r in rows}
    if out is not None:
        with open(out, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=SWEEP_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            for r in rows:
                writer.writerow({**r, "epochs": epochs[r["run"]], "command": command})
    if plot is not None:
        after = "/".join(str(e) for e in sorted(set(epochs.values())))
        plot_heatmap(rows, plot, title=f"{sweep_dir.name}: validation accuracy after "
                                       f"{after} epochs (best boxed)")
    if curves is not None:
        plot_val_curves(sweep_dir, rows, curves,
                        title=f"{sweep_dir.name}: validation accuracy per epoch")
    return best["T"], best["alpha"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("add", help="store a finished run's figures")
    a.add_argument("run", type=Path)
    a.add_argument("--experiment", required=True, choices=sorted(EXPERIMENTS))
    a.add_argument("--variant", required=True, choices=VARIANTS)
    a.add_argument("--command", required=True, help="the exact command that made the run")
    sub.add_parser("tables", help="rewrite the tables in docs/RESULTS.md")
    sub.add_parser("experiments", help="list the experiments runs can be recorded in")
    w = sub.add_parser("sweep", help="the T and alpha a finished sweep chooses on validation")
    w.add_argument("sweep_dir", type=Path)
    w.add_argument("--out", type=Path, help="also store its validation figures as this CSV")
    w.add_argument("--command", default="", help="the exact command that made the sweep")
    w.add_argument("--plot", type=Path, help="also draw its validation heatmap as this PNG")
    w.add_argument("--curves", type=Path,
                   help="also draw its cells' validation accuracy per epoch as this PNG")
    args = p.parse_args()
    if args.cmd == "add":
        try:
            print(add(args.run, args.experiment, args.variant, args.command))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"not recorded: {e}") from None
    elif args.cmd == "experiments":
        print("\n".join(EXPERIMENTS))
    elif args.cmd == "sweep":
        T, alpha = sweep(args.sweep_dir, args.out, args.command, args.plot, args.curves)
        print(f"chosen on validation: T={T:g} ALPHA={alpha:g}")
    else:
        print(tables())


if __name__ == "__main__":
    main()
