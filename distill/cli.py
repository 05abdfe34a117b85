"""The `distill` command line: typer commands only, no training logic.

Flags become dotted recipe overrides (``--T 4`` -> ``student.T = 4``); ``--set key=value``
reaches any recipe field. Every user error is one line on stderr and exit code 2
(``--debug`` shows the traceback).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from distill.errors import DistillError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

err = Console(stderr=True)

# ----------------------------------------------------------------------------- options

RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe YAML path, or a shipped recipe "
                         "name (digits, mnist_hinton, cifar10_resnet, cifar10_jpeg_resnet). "
                         "Default: the digits defaults.")
SetOpt = typer.Option(None, "--set", help="Override any recipe field: --set teacher.optim.lr=0.01 "
                      "(repeatable; values are read as YAML).")
DatasetOpt = typer.Option(None, "--dataset", help="digits | mnist | fashion-mnist | cifar10 | "
                          "cifar100 | imagefolder:<path>  (data.name)")
DataDirOpt = typer.Option(None, "--data-dir", help="Folder holding the dataset's official files "
                          "(data.data_dir; default $DISTILL_DATA_DIR).")
ValSizeOpt = typer.Option(None, "--val-size", help="Validation split carved from train: fraction "
                          "< 1 or a count; 0 = train on everything (data.val_size).")
ModelOpt = typer.Option(None, "--model", help="Model name, see `distill models` (<role>.model.name).")
EpochsOpt = typer.Option(None, "--epochs", help="Epochs (<role>.epochs).")
BatchOpt = typer.Option(None, "--batch-size", help="Batch size (<role>.batch_size).")
LrOpt = typer.Option(None, "--lr", help="Learning rate (<role>.optim.lr).")
OptimOpt = typer.Option(None, "--optimizer", help="sgd | momentum | nesterov | adam | adamw | "
                        "lookahead_<inner> (<role>.optim.name).")
SeedOpt = typer.Option(None, "--seed", help="Seed for initialisation and dropout.")
DataSeedOpt = typer.Option(None, "--data-seed", help="Seed for the validation split and batch "
                           "order (data.data_seed).")
DeviceOpt = typer.Option(None, "--device", help="auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps.")
NameOpt = typer.Option(None, "--name", help="Run folder name under the output dir (must be new).")
OutputOpt = typer.Option(None, "--output-dir", help="Where run folders go (default outputs/).")
WandbOpt = typer.Option(None, "--wandb", help="auto (online if logged in, else offline) | online "
                        "| offline | disabled.")
ResumeOpt = typer.Option(None, "--resume", help="Continue this run folder from its newest "
                         "checkpoint, with its own recipe (plus any flags given).")
AllowOpt = typer.Option(False, "--allow-changes", help="With --resume: accept a recipe that "
                        "differs from the run's (e.g. more epochs).")
CkptOpt = typer.Option(None, "--checkpoint-every", help="Also checkpoint every N optimizer steps "
                       "(checkpoint.every_steps); one is also written at each epoch end unless "
                       "checkpoint.every_epoch is false.")
DetOpt = typer.Option(None, "--deterministic", help="Use PyTorch's deterministic algorithms "
                      "(bitwise-repeatable runs on GPU too).")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar, per-epoch lines or "
                        "tracking chatter; the run folder and the final table still print.")
DebugOpt = typer.Option(False, "--debug", help="Show the traceback of an error.")


def user_errors(fn: Callable) -> Callable:
    """Run a command; a DistillError becomes one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        debug = kwargs.get("debug", False)
        try:
            return fn(*args, **kwargs)
        except DistillError as exc:
            if debug:
                raise
            err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
    return wrapper


def _overrides(role: str, sets: list[str] | None, **flags: Any) -> dict[str, Any]:
    """Flags -> dotted overrides for ``role`` (teacher/student); --set wins over flags."""
    from distill.recipe import parse_set

    mapping = {"dataset": "data.name", "data_dir": "data.data_dir", "val_size": "data.val_size",
               "data_seed": "data.data_seed", "seed": "seed", "device": "device",
               "output_dir": "output_dir", "wandb": "wandb.mode",
               "model": f"{role}.model.name", "epochs": f"{role}.epochs",
               "batch_size": f"{role}.batch_size", "lr": f"{role}.optim.lr",
               "optimizer": f"{role}.optim.name", "T": "student.T", "alpha": "student.alpha",
               "teacher": "student.teacher", "teacher_model": "student.teacher_model",
               "baseline": "student.baseline", "checkpoint_every": "checkpoint.every_steps",
               "deterministic": "deterministic"}
    out = {mapping[k]: v for k, v in flags.items() if v is not None}
    for assignment in sets or []:
        key, value = parse_set(assignment)
        out[key] = value
    return out


def _report(result, quiet: bool) -> None:
    """After a run: the results table (printed already unless quiet) and the folder; nothing
    on the ranks of a torchrun job other than 0 (they hold no run)."""
    if result.run_dir is None:
        return
    if quiet:
        from distill.api import summary_table

        Console().print(summary_table(result.summary))
    err.print(f"done: {result.run_dir}", markup=False, highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------- commands

@app.command()
@user_errors
def teach(recipe: Optional[str] = RecipeOpt, dataset: Optional[str] = DatasetOpt,
          data_dir: Optional[str] = DataDirOpt, val_size: Optional[float] = ValSizeOpt,
          model: Optional[str] = ModelOpt, epochs: Optional[int] = EpochsOpt,
          batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt,
          optimizer: Optional[str] = OptimOpt, seed: Optional[int] = SeedOpt,
          data_seed: Optional[int] = DataSeedOpt, device: Optional[str] = DeviceOpt,
          name: Optional[str] = NameOpt, output_dir: Optional[str] = OutputOpt,
          wandb: Optional[str] = WandbOpt, set_: Optional[list[str]] = SetOpt,
          resume: Optional[Path] = ResumeOpt, allow_changes: bool = AllowOpt,
          checkpoint_every: Optional[int] = CkptOpt, deterministic: Optional[bool] = DetOpt,
          quiet: bool = QuietOpt, debug: bool = DebugOpt) -> None:
    """Train a teacher (the recipe's `teacher` section) and write outputs/<run>/.

    Example: distill teach --recipe mnist_hinton --data-dir ../shared/data
    """
    from distill.api import teach as run_teach

    overrides = _overrides("teacher", set_, dataset=dataset, data_dir=data_dir,
                           val_size=val_size, model=model, epochs=epochs, batch_size=batch_size,
                           lr=lr, optimizer=optimizer, seed=seed, data_seed=data_seed,
                           device=device, output_dir=output_dir, wandb=wandb,
                           checkpoint_every=checkpoint_every, deterministic=deterministic)
    _report(run_teach(recipe, overrides, name=name, quiet=quiet, resume=resume,
                      allow_changes=allow_changes), quiet)


@app.command()
@user_errors
def student(recipe: Optional[str] = RecipeOpt,
            T: Optional[float] = typer.Option(None, "--T", help="Temperature of the soft term "
                                              "(> 0; student.T)."),
            alpha: Optional[float] = typer.Option(None, "--alpha", help="Weight of the soft "
                                                  "term in [0, 1]; 1 - alpha weighs the labels "
                                                  "(student.alpha)."),
            teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher run folder, "
                                                  "weights file (.safetensors / state dict) or "
                                                  "timm:<name>. Default: the newest finished "
                                                  "teacher run for the dataset."),
            teacher_model: Optional[str] = typer.Option(None, "--teacher-model", help="Model "
                                                        "name for a bare teacher weights file."),
            baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline student "
                                                   "run, to report the share of the "
                                                   "teacher-baseline gap closed."),
            dataset: Optional[str] = DatasetOpt, data_dir: Optional[str] = DataDirOpt,
            val_size: Optional[float] = ValSizeOpt, model: Optional[str] = ModelOpt,
            epochs: Optional[int] = EpochsOpt, batch_size: Optional[int] = BatchOpt,
            lr: Optional[float] = LrOpt, optimizer: Optional[str] = OptimOpt,
            seed: Optional[int] = SeedOpt, data_seed: Optional[int] = DataSeedOpt,
            device: Optional[str] = DeviceOpt, name: Optional[str] = NameOpt,
            output_dir: Optional[str] = OutputOpt, wandb: Optional[str] = WandbOpt,
            set_: Optional[list[str]] = SetOpt, resume: Optional[Path] = ResumeOpt,
            allow_changes: bool = AllowOpt, checkpoint_every: Optional[int] = CkptOpt,
            deterministic: Optional[bool] = DetOpt, quiet: bool = QuietOpt,
            debug: bool = DebugOpt) -> None:
    """Distil a student from a teacher with
    loss = alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(s, y).

    Example: distill student --T 4 --alpha 0.9
    """
    from distill.api import student as run_student

    overrides = _overrides("student", set_, T=T, alpha=alpha, teacher=teacher,
                           teacher_model=teacher_model, baseline=baseline, dataset=dataset,
                           data_dir=data_dir, val_size=val_size, model=model, epochs=epochs,
                           batch_size=batch_size, lr=lr, optimizer=optimizer, seed=seed,
                           data_seed=data_seed, device=device, output_dir=output_dir,
                           wandb=wandb, checkpoint_every=checkpoint_every,
                           deterministic=deterministic)
    _report(run_student(recipe, overrides, name=name, quiet=quiet, resume=resume,
                        allow_changes=allow_changes), quiet)


@app.command()
@user_errors
def sweep(recipe: Optional[str] = RecipeOpt,
          T: Optional[str] = typer.Option(None, "--T", help="Temperatures, comma-separated "
                                          "(default: the recipe's sweep.T, 1,2,4,8,16)."),
          alpha: Optional[str] = typer.Option(None, "--alpha", help="Soft-term weights in "
                                              "[0, 1], comma-separated (default: the "
                                              "recipe's sweep.alpha, 0.1,0.3,0.5,0.7,0.9)."),
          seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds, comma-separated, "
                                              "each cell trained once per seed (default: the "
                                              "recipe's sweep.seeds, 0)."),
          mode: Optional[str] = typer.Option(None, "--mode", help="batched (students of a "
                                             "chunk trained together, one teacher forward per "
                                             "batch; on a CPU students over 100K parameters "
                                             "run looped, one after another), sequential, or "
                                             "auto (batched where it pays: not for such "
                                             "students whose teacher logits are cached) "
                                             "(default: sweep.mode, auto)."),
          chunk_size: Optional[int] = typer.Option(None, "--chunk-size", help="Students per "
                                                   "batched chunk (default: as many as fit)."),
          teacher: Optional[str] = typer.Option(None, "--teacher", help="Teacher run folder "
                                                "(default: the newest teacher run)."),
          baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline student "
                                                 "run, for the share of the gap closed."),
          wandb_sweep: Optional[Path] = typer.Option(None, "--wandb-sweep", help="Write a wandb "
                                                     "sweep config (grid) to this file and "
                                                     "exit; run it with `wandb sweep` + "
                                                     "`wandb agent` on many machines."),
          dataset: Optional[str] = DatasetOpt, data_dir: Optional[str] = DataDirOpt,
          epochs: Optional[int] = EpochsOpt, device: Optional[str] = DeviceOpt,
          name: Optional[str] = typer.Option(None, "--name", help="Sweep folder name; the "
                                             "same name again continues that sweep."),
          output_dir: Optional[str] = OutputOpt, wandb: Optional[str] = WandbOpt,
          set_: Optional[list[str]] = SetOpt, checkpoint_every: Optional[int] = CkptOpt,
          resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this sweep "
                                                "folder (same as --name with its name): "
                                                "finished cells are kept, interrupted ones "
                                                "resume from their checkpoints."),
          quiet: bool = QuietOpt, debug: bool = DebugOpt) -> None:
    """Train a T x alpha (x seed) grid of students from one teacher and tabulate it.

    Example: distill sweep --T 1,2,4,8 --alpha 0.5,0.9 --seeds 0,1,2. Writes outputs/<sweep>/ with one run folder per cell, results.csv, heatmap.png, val_curves.png; the best cell is chosen on validation accuracy, never on test.
    """
    from distill import sweep as sw
    from distill.api import sweep as run_sweep

    if resume is not None:
        if not (resume / sw.SWEEP_FILE).is_file():
            raise DistillError(f"--resume {resume}: not a sweep folder (no {sw.SWEEP_FILE})")
        name, output_dir = resume.name, str(resume.parent)
        recipe = recipe or str(resume / "recipe.yaml")
    Ts = sw.parse_values(T, "T") if T is not None else None
    alphas = sw.parse_values(alpha, "alpha") if alpha is not None else None
    seed_list = sw.parse_values(seeds, "seeds", int) if seeds is not None else None
    if resume is not None:  # the grid the sweep was started with, unless flags say otherwise
        info = json.loads((resume / sw.SWEEP_FILE).read_text())
        Ts, alphas = Ts or info.get("Ts"), alphas or info.get("alphas")
        seed_list = seed_list if seed_list is not None else info.get("seeds")
    overrides = _overrides("student", set_, teacher=teacher, baseline=baseline,
                           dataset=dataset, data_dir=data_dir, epochs=epochs, device=device,
                           output_dir=output_dir, wandb=wandb,
                           checkpoint_every=checkpoint_every)
    if wandb_sweep is not None:
        from distill.recipe import load_recipe

        grid_from = load_recipe(recipe, overrides).sweep
        Ts, alphas = Ts or grid_from.T, alphas or grid_from.alpha
        seed_list = seed_list if seed_list is not None else grid_from.seeds
        extra = [f"--set={k}={v}" for k, v in overrides.items()]
        sw.grid(Ts, alphas, seed_list)  # validate the values
        sw.write_wandb_sweep(wandb_sweep, sw.wandb_sweep_config(recipe, Ts, alphas, seed_list,
                                                                extra))
        err.print(f"wrote {wandb_sweep}: run `wandb sweep {wandb_sweep}`, then `wandb agent "
                  f"<sweep id>` on each machine (one per GPU)", markup=False, soft_wrap=True)
        return
    result = run_sweep(recipe, overrides, Ts=Ts, alphas=alphas, seeds=seed_list, mode=mode,
                       name=name, quiet=quiet, chunk_size=chunk_size)
    if quiet:
        Console().print(sw.sweep_table(result.sweep_dir, result.rows))
    err.print(f"done: {result.sweep_dir}", markup=False, highlight=False, soft_wrap=True)


@app.command()
@user_errors
def report(sweep_dir: Path = typer.Argument(..., help="A sweep folder (outputs/<sweep>)."),
           debug: bool = DebugOpt) -> None:
    """Reprint a sweep's table and redraw its plots (heatmap, validation curves) from its files."""
    from distill.sweep import report as run_report

    if not sweep_dir.is_dir():
        raise DistillError(f"{sweep_dir}: no such sweep folder")
    run_report(sweep_dir)


@app.command("eval")
@user_errors
def eval_(run: Path = typer.Argument(..., help="A finished run folder (outputs/<run>)."),
          baseline: Optional[str] = typer.Option(None, "--baseline", help="A baseline student "
                                                 "run, for the share of the gap closed."),
          data_dir: Optional[str] = DataDirOpt, device: str = typer.Option("auto", "--device"),
          json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
          debug: bool = DebugOpt) -> None:
    """Evaluate a finished run on its test split.

    Reports accuracy, top-5, macro F1, NLL, ECE, a confusion matrix, parameters, MACs and latency; for a student also the teacher's figures, agreement with the teacher and (with --baseline) the share of the teacher-baseline gap it closes.
    """
    import json

    from distill.api import evaluate, summary_table

    result = evaluate(run, baseline, data_dir, device)
    if json_out:
        print(json.dumps(result, indent=2, default=str))
    else:
        Console().print(summary_table(result))


@app.command()
def models() -> None:
    """List the model names (any timm model too, as timm:<name>)."""
    from distill.models import list_models

    table = Table("model", "description", title="models (also timm:<name> for any timm model)")
    for name, description in list_models().items():
        table.add_row(name, description)
    Console().print(table)


@app.command()
def datasets() -> None:
    """List the dataset names and where their files come from."""
    from distill.data import DATA_DIR_ENV, list_datasets

    table = Table("dataset", "description",
                  title=f"datasets (files from --data-dir or ${DATA_DIR_ENV})")
    for name, description in list_datasets().items():
        table.add_row(name, description)
    Console().print(table)


def _version(value: bool) -> None:
    if value:
        from distill import __version__

        print(f"distill {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    """Knowledge distillation: train a teacher, distil a student, evaluate, compare.

    Quick start (embedded digits data, no network): distill teach; distill student --T 4
    """


def main() -> None:
    """Console-script entry point: usage errors (bad flags or values) are one line, exit 2."""
    try:  # typer >= 0.25 vendors click; older typer uses click itself
        from typer._click.exceptions import UsageError
    except ImportError:  # pragma: no cover - depends on the installed typer
        from click.exceptions import UsageError

    # plain `distill`: the overview, as --help (typer 0.29 prints it itself before raising
    # NoArgsIsHelpError, older ones do not: printing it on that error showed it twice)
    args = sys.argv[1:] or ["--help"]
    try:
        code = app(prog_name="distill", args=args, standalone_mode=False)
    except UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else "distill"
        err.print(f"error: {exc.format_message()} (see: {command} --help)", markup=False,
                  highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    sys.exit(main())
