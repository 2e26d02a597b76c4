"""What ``bitvote reproduce`` writes: ``table.md`` (the seed's layout), ``results.json`` and
``accuracy.png``, every file atomically.

``results.json`` is a list of row objects (``model``, ``voter``, ``tie``, ``pad_value``,
``resolved``, ``mode``/``variant``, ``top1``, ``top5``, ``width``, ``epochs``, ``dataset``,
...) that ``bitvote hw report`` reads. Rows whose retraining diverged have no accuracy: they
appear in the table as "diverged" and are kept out of ``results.json`` (whose consumers need a
number), listed under ``DIR/stages`` instead.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import List

from ..io import atomic_write_bytes
from ..voter import is_mv

__all__ = ["format_table", "header", "write_all", "plot", "display_name", "format_ablation", "write_ablation"]

#: display names, spelled as the seed's tables spell them
NAMES = {"reactnet18": "ReActNet-18", "birealnet18": "Bi-RealNet-18", "xnornet18": "XNORNet-18",
         "reactneta": "ReActNet-A", "resnet18": "ResNet-18"}


def display_name(model: str) -> str:
    return NAMES.get(model, model)


def _dataset_label(rows: List[dict], p: dict) -> str:
    src = next((str(r.get("data") or "") for r in rows), "")
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}.get(p["dataset"], p["dataset"])
    return f"{name} (JPEG copy)" if "jpeg" in src.lower() else name


def header(rows: List[dict], p: dict, own_recipes: bool = False) -> str:
    """One paragraph: dataset, width, epochs, subset, the retraining recipe and the ties.

    ``own_recipes``: each row names its recipe (the ablation), so the preset's is not stated.
    """
    sub = f"{p['subset']} training images" if p.get("subset") else "the full training split"
    test = f"{p['test_subset']} test images" if p.get("test_subset") else "the full test split"
    recipe = " (each row's recipe in its row)" if own_recipes else f" (recipe `{p.get('recipe', 'plain')}`)"
    n = next((r.get("n") for r in rows if r.get("n")), None)
    if n and not p.get("test_subset"):
        test = f"the full test split ({n} images)"
    return (f"{_dataset_label(rows, p)}, preset `{p['preset']}`: width {p['width']:g}, {sub}, tested on {test}. "
            f"Baseline: popcount, {_epochs(p['epochs'])}, Adam lr {p['lr']:g}, linear decay, batch {p['batch_size']}. "
            f"Converted: the baseline's weights with the voter swapped in; + BN recalibration: BN statistics "
            f"re-estimated on {p['recalibrate']} training images. Retrained: from the baseline, {_epochs(p['retrain_epochs'])} "
            f"through the voter ({p['surrogate']}, sigma {p['sigma']}, lr {p['retrain_lr']:g}), the same budget "
            f"for every row{recipe}. Tie: +1 for MV, `first` for hierarchies unless stated. Each voter row names the "
            f"hierarchies it resolved to, layer by layer (distinct ones, in layer order).")


def _epochs(n) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _acc(v) -> str:
    return "diverged" if v is None else f"{v:.2f}"


def _voter_text(r: dict) -> str:
    spec, res = r["voter"], r.get("resolved") or ""
    try:
        mv = is_mv(spec)
    except Exception:  # a per-layer mapping ("layer1.*=tap;*=mv") is no single voter
        mv = False
    what = "Majority Voter" if mv else f"HMV `{spec}`"
    extra = [] if mv and str(r.get("tie")) == "1" else [f"tie {r.get('tie')}"]
    if r.get("pad_value") is not None:
        extra.append(f"pad {r['pad_value']:+g}")
    return what + (f" ({', '.join(extra)})" if extra else "") + (f" = {res}" if res else "")


def _recipe_note(r: dict) -> str:
    """``, recipe kd, 4 of 6 epochs (plateau)`` for a row that is not the plain full budget."""
    parts = []
    if r.get("recipe") not in (None, "plain"):
        parts.append(f"recipe {r['recipe']}")
    if r.get("stopped") == "plateau":
        parts.append(f"{r.get('epochs_run')} of {r.get('epochs')} epochs, loss stopped falling")
    return "".join(", " + x for x in parts)


def format_table(rows: List[dict]) -> str:
    """The seed's layout: Models, Top-1, Top-5; baseline, converted, + BN recalibration, retrained."""
    lines = ["| Models | Top-1 (%) | Top-5 (%) |", "|---|---|---|"]
    for r in rows:
        m = display_name(r["model"])
        if r["mode"] == "baseline":
            name = f"{m}"
        elif r["mode"] == "converted":
            name = f"{m} with {_voter_text(r)}"
        elif r["mode"] == "recalibrated":
            name = f"{m} with {_voter_text(r)} + BN recalibration"
        else:
            name = f"Our {m} with {_voter_text(r)} (retrained{_recipe_note(r)})"
        t5 = "" if r["top5"] is None else f"{r['top5']:.2f}"
        lines.append(f"| {name} | {_acc(r['top1'])} | {t5} |")
    return "\n".join(lines)


def plot(rows: List[dict], p: dict, path: Path) -> str:
    """Accuracy per voter row (converted / recalibrated / retrained), one panel per model."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: accuracy.png skipped (pip install 'bitvote[plot]')"
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(max(6, 1.6 * 7), 4.2), squeeze=False, sharey=True)
    modes = [("converted", "converted"), ("recalibrated", "+ BN recal."), ("retrained", "retrained")]
    for ax, model in zip(axes[0], models):
        mine = [r for r in rows if r["model"] == model]
        base = next((r for r in mine if r["mode"] == "baseline"), None)
        labels = list(dict.fromkeys(r["label"] for r in mine if r["mode"] != "baseline"))
        w = 0.8 / len(modes)
        for j, (mode, text) in enumerate(modes):
            ys = []
            for lab in labels:
                r = next((r for r in mine if r.get("label") == lab and r["mode"] == mode), None)
                ys.append(float("nan") if r is None or r["top1"] is None else r["top1"])
            ax.bar([i + (j - 1) * w for i in range(len(labels))], ys, w, label=text)
        if base is not None:
            ax.axhline(base["top1"], color="black", ls="--", lw=1, label=f"popcount baseline {base['top1']:.1f}")
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=7)
        ax.set_title(display_name(model), fontsize=10)
        ax.set_ylim(0, 100)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("top-1 (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"{_dataset_label(rows, p)}, width {p['width']:g}, baseline {_epochs(p['epochs'])}, "
                 f"retrain {_epochs(p['retrain_epochs'])} (preset {p['preset']})", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return ""


def write_all(out: Path, rows: List[dict], p: dict, wall_s: float, print_table=True, log=print) -> None:
    """table.md, results.json, accuracy.png; prints the table."""
    out = Path(out)
    total = sum(float(r.get("wall_s") or 0) for r in rows)
    table = format_table(rows)
    text = (f"# Reproduction (preset `{p['preset']}`)\n\n{header(rows, p)}\n\n{table}\n\n"
            f"Wall time of the stages: {total / 60:.1f} min in all (this invocation: {wall_s / 60:.1f} min).\n")
    atomic_write_bytes(out / "table.md", text.encode())
    ok = [r for r in rows if r["top1"] is not None]
    atomic_write_bytes(out / "results.json", (json.dumps(ok, indent=1) + "\n").encode())
    note = plot(rows, p, out / "accuracy.png")
    if note:
        log(note)
    if print_table:
        print(f"\n{header(rows, p)}\n\n{table}\n\n{out / 'table.md'}, {out / 'results.json'}"
              + ("" if note else f", {out / 'accuracy.png'}"), flush=True)


def format_ablation(rows: List[dict]) -> str:
    """One line per (model, voter, recipe): retrained top-1/top-5, epochs run, why it stopped,
    the gap to the baseline; the converted and recalibrated rows as references."""
    lines = ["| Model | Voter | Recipe | Top-1 (%) | Top-5 (%) | vs baseline | Epochs | Stopped | Wall (min) |",
             "|---|---|---|---:|---:|---:|---:|---|---:|"]
    base = {r["model"]: r for r in rows if r["mode"] == "baseline"}
    for r in rows:
        b = base.get(r["model"])
        gap = "" if r["top1"] is None or b is None else f"{r['top1'] - b['top1']:+.2f}"
        recipe = {"baseline": "(popcount baseline)", "converted": "(converted)",
                  "recalibrated": "(+ BN recalibration)"}.get(r["mode"], r.get("recipe") or "plain")
        t5 = "" if r["top5"] is None else f"{r['top5']:.2f}"
        ep = r.get("epochs_run", r.get("epochs")) if r["mode"] == "retrained" else ""
        wall = f"{float(r.get('wall_s') or 0) / 60:.1f}"
        voter = "popcount" if r["mode"] == "baseline" else f"`{r['voter']}` (tie {r.get('tie')})"
        lines.append(f"| {display_name(r['model'])} | {voter} | {recipe} | {_acc(r['top1'])} | {t5} | {gap} | {ep} | "
                     f"{r.get('stopped', '') if r['mode'] == 'retrained' else ''} | {wall} |")
    return "\n".join(lines)


def write_ablation(out: Path, rows: List[dict], p: dict, wall_s: float, print_table=True, log=print) -> None:
    """ablation.md and ablation.json (the rows, in results.json's form); prints the table."""
    out = Path(out)
    table = format_ablation(rows)
    text = (f"# Retraining recipes at equal budget (preset `{p['preset']}`)\n\n{header(rows, p, own_recipes=True)}\n\n"
            f"Every recipe retrains from the same baseline for at most {_epochs(p['retrain_epochs'])} "
            f"(`long=X` recipes excepted).\n\n{table}\n\nThis invocation: {wall_s / 60:.1f} min.\n")
    atomic_write_bytes(out / "ablation.md", text.encode())
    ok = [r for r in rows if r["top1"] is not None]
    atomic_write_bytes(out / "ablation.json", (json.dumps(ok, indent=1) + "\n").encode())
    if print_table:
        print(f"\n{table}\n\n{out / 'ablation.md'}, {out / 'ablation.json'}", flush=True)
