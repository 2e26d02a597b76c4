"""The training run: ``train(TrainConfig)`` and ``evaluate(model, split)``.

One run writes into ``out``: ``last.pt`` (each epoch, and mid-epoch every ``ckpt_every_s``
seconds or ``ckpt_every_steps`` steps), ``best.pt`` (best test top-1), ``log.csv`` (one row
per epoch) and ``result.json`` when it finishes — every file atomically. Everything that
decides the next step (weights, BN statistics, optimizer, step, data order, augmentation,
RNG states) is in ``last.pt`` or is a pure function of (seed, epoch, index), so
``resume=True`` continues bit for bit where the run stopped.

Launched by torchrun, the same function is one rank of a DistributedDataParallel run
(:mod:`.distributed`): ``batch_size`` stays the global batch, and only rank 0 writes.
A non-finite loss stops the run with one line naming the step; ``last.pt`` keeps the last
good state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import data as D
from ..errors import BitvoteError
from ..io import atomic_write_bytes, hold_folder
from ..nn.layers import WEIGHT_GRADS, set_weight_grad
from ..nn.normfree import adaptive_clip_grad_
from ..voter import is_popcount
from . import checkpoint as C
from . import distributed as Dist
from . import heap
from .kd import distribution_loss
from .optim import SCHEDULES, lr_at, make_optimizer
from .progress import Progress, write_csv
from .recalibrate import recalibrate_bn
from .resume import resumed_config

__all__ = ["TrainConfig", "train", "evaluate", "evaluate_checkpoint", "device", "check_config",
           "load_for_evaluation", "build_model", "optimizer_step", "autocast", "biased_deep_hierarchy",
           "SimulatedKill"]


@dataclass
class TrainConfig:
    """Every option of a run; ``None`` means "the default" (or the ``init`` checkpoint's value)."""

    model: Optional[str] = None  # default: the init checkpoint's model, else reactnet18
    dataset: str = "cifar10"
    data: Optional[str] = None  # root; None: $BITVOTE_DATA or ~/.cache/bitvote/data
    voter: Optional[str] = None  # default: the init checkpoint's voter, else popcount
    tie: Optional[str] = None
    surrogate: Optional[str] = None  # the vote's backward: approxsign | ste
    sigma: Optional[str] = None  # the vote's surrogate width rule
    pad_value: Optional[float] = None
    bn: Optional[str] = None  # bn | none | free (default: the init checkpoint's, else bn)
    width: Optional[float] = None  # default: the init checkpoint's width, else 1.0
    epochs: int = 10
    batch_size: int = 128  # the global batch, whatever the number of processes
    lr: float = 1e-3
    wd: Optional[float] = None  # default: 1e-5 in step 1, else 0 (ReActNet)
    schedule: str = "linear"
    label_smoothing: float = 0.0
    step: int = 2  # 1: binary activations, real weights; 2: binary weights too
    subset: Optional[int] = None  # train on a fixed random subset of N images
    test_subset: Optional[int] = None  # evaluate on a fixed random subset of N test images
    eval_every: int = 1  # evaluate every N epochs (and always after the last)
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/train"
    resume: bool = False
    init: Optional[str] = None  # start from this checkpoint's weights
    teacher: Optional[str] = None  # distill from this checkpoint (ReActNet's distribution loss)
    threads: Optional[int] = None
    ckpt_every_s: float = 120.0
    ckpt_every_steps: int = 0
    download: bool = True
    quiet: bool = False
    sync_bn: bool = False  # SyncBatchNorm across processes (CUDA only)
    agc: Optional[float] = None  # adaptive gradient clipping factor; None: 0.04 for bn="free", else off
    amp: bool = False  # bf16 autocast on the CPU too (CUDA always trains in bf16); votes stay exact
    compile: bool = False  # torch.compile the model (worth it on CUDA; slow to start on the CPU)
    stop_after_steps: int = 0  # end this invocation after N steps with last.pt written (0: run to the end)
    weight_grad: str = "scaled"  # scaled: the forward's chain rule (x mean|W|); unscaled: ReActNet/Bi-Real's
    override: bool = False  # resume: apply the given options that differ from the saved run (see .resume)
    given: Optional[tuple] = None  # the options the user set (the CLI records them); None: the non-defaults
    # retraining recipes (docs/reproduce.md, "Retraining recipes")
    self_distill: bool = False  # the --init checkpoint (the popcount parent) is the distillation teacher
    recalibrate_bn: int = 0  # re-estimate BN on N train images before the first step and at every voter stage
    progressive: Optional[str] = None  # "V1;V2" voters before the target, or "layers": convert layer group by group
    patience: int = 0  # stop when the epoch's train loss has not fallen for N epochs (0: run every epoch)
    min_delta: float = 1e-3  # "fallen" means below (1 - min_delta) x the best earlier epoch's loss

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SimulatedKill(Exception):
    """What ``train(cfg, _stop_after=N)`` raises after N steps: a kill at a step boundary,
    for tests of the exact resume (the run's files stay as a real kill would leave them)."""


def device(name) -> torch.device:
    """``name`` (``cpu``, ``cuda``, ``cuda:N``) as a device, or a one-line error when this
    machine does not have it: every command that takes ``--device`` checks it here."""
    name = str(name)
    if name != "cpu" and not (name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit())):
        raise BitvoteError(f"unknown device {name!r}: choose cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise BitvoteError(f"--device {name}: no CUDA device is available")
        if ":" in name and int(name[5:]) >= n:
            raise BitvoteError(f"--device {name}: this machine has {n} CUDA device(s)")
    return torch.device(name)


_as_device = device  # for functions whose ``device`` parameter shadows the function


def autocast(device: torch.device, amp: bool = False):
    """bf16 autocast on CUDA, and on the CPU with ``amp`` (fp32 otherwise). Votes and ties stay
    exact either way (see :func:`bitvote.nn.functional.binary_conv2d`)."""
    if device.type == "cuda" or amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def evaluate(model: nn.Module, split: D.Split, batch_size: int = 500) -> dict:
    """Top-1 / top-5 accuracy (percent) of ``model`` on ``split``; restores the training mode."""
    c1, c5, n = _counts(model, split, batch_size)
    return {"top1": 100.0 * c1 / max(n, 1), "top5": 100.0 * c5 / max(n, 1), "n": n}


def _evaluate_world(model, split: D.Split, world, dev, batch_size: int = 500) -> dict:
    """:func:`evaluate` with the test split sharded over the ranks (the same numbers on every rank)."""
    if not world.active:
        return evaluate(model, split, batch_size)
    part = D.Split(split.x[world.rank :: world.size], split.y[world.rank :: world.size], split.dataset, split.source)
    c1, c5, n = Dist.all_sum(list(_counts(model, part, batch_size)), world, dev)
    return {"top1": 100.0 * c1 / max(n, 1), "top5": 100.0 * c5 / max(n, 1), "n": int(n)}


@torch.no_grad()
def _counts(model: nn.Module, split: D.Split, batch_size: int) -> tuple:
    """``(top-1 hits, top-5 hits, n)`` of ``model`` on ``split``."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct1 = correct5 = 0
    k = min(5, split.num_classes)
    for i in range(0, len(split), batch_size):
        x = D.normalize(split.x[i : i + batch_size].to(dev), split.dataset)
        y = split.y[i : i + batch_size].to(dev)
        with autocast(dev):
            out = model(x)
        top = out.float().topk(k, 1).indices
        hit = top == y[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(1).sum())
    model.train(was)
    return correct1, correct5, len(split)


def load_for_evaluation(path, data=None, device="cpu", test_subset=None, download=True):
    """A checkpoint's model and the test split of the dataset it was trained on.

    Returns ``(model, checkpoint dict, dataset name, test split)``, model and split on
    ``device``; a class count that does not match the dataset is a one-line error. Shared by
    ``bitvote eval`` and ``bitvote convert``, so both measure on the same images.
    """
    dev = _as_device(device)
    model, ck = C.load_model(path, dev)
    dataset = (ck.get("args") or {}).get("dataset") or ck.get("dataset") or "cifar10"
    test = D.subset(D.load(dataset, "test", data, device=dev, download=download), test_subset)
    if test.num_classes != model.config["num_classes"]:
        raise BitvoteError(f"checkpoint {path} has {model.config['num_classes']} classes, {dataset} has {test.num_classes}")
    return model, ck, dataset, test


def evaluate_checkpoint(path, data=None, device="cpu", batch_size=500, test_subset=None, download=True) -> dict:
    """What ``bitvote eval`` prints: accuracy of a checkpoint on its dataset's test split."""
    model, ck, dataset, test = load_for_evaluation(path, data, device, test_subset, download)
    res = evaluate(model, test, batch_size)
    return {**res, "model": model.config["name"], "voter": model.config["voter"], "dataset": dataset,
            "width": model.config["width"], "step": 1 if not C.binary_weights(model) else 2, "checkpoint": str(path)}


# ---------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, num_classes: int):
    """The model of a fresh run: from ``cfg``, defaults filled from the ``init`` checkpoint
    (whose weights it then holds)."""
    from .. import models

    init = C.load(cfg.init) if cfg.init else None
    base = dict(init["config"]) if init else {}
    name = cfg.model or base.get("name") or "reactnet18"
    if init and name != base.get("name"):
        raise BitvoteError(f"--init {cfg.init} holds a {base.get('name')} model, not {name}")
    width = cfg.width if cfg.width is not None else base.get("width", 1.0)
    if init and float(width) != float(base.get("width")):
        raise BitvoteError(f"--init {cfg.init} has width {base.get('width')}, not {width}")
    if init and base.get("num_classes") != num_classes:
        raise BitvoteError(f"--init {cfg.init} has {base.get('num_classes')} classes, {cfg.dataset} has {num_classes}")
    voter = cfg.voter or base.get("voter") or "popcount"
    if cfg.step == 1 and not is_popcount(voter):
        raise BitvoteError(f"--step 1 trains real weights: a voter ({voter}) needs binary weights, use --voter popcount")
    opts = {k: v for k, v in base.items() if k not in ("name", "num_classes", "voter", "width")}
    for k in ("tie", "surrogate", "sigma", "pad_value", "bn"):
        if getattr(cfg, k) is not None:
            opts[k] = getattr(cfg, k)
    model = models.create(name, num_classes=num_classes, voter="popcount", width=width, **opts)
    if cfg.step == 1:
        C.set_binary_weights(model, False)
    if init:
        try:
            model.load_state_dict(init["model"])
        except RuntimeError:
            raise BitvoteError(f"--init {cfg.init}: its weights do not fit {name} (damaged or another model)") from None
    if not is_popcount(voter) or isinstance(voter, dict):
        models.set_voter(model, voter, opts.get("tie"))
    return model


def biased_deep_hierarchy(model: nn.Module) -> bool:
    """True when some voter has 3+ levels and no level breaks ties with 'first' (docs/results.md)."""
    from ..models import voter_layers

    for _, layer in voter_layers(model):
        h = getattr(layer, "hierarchy", None)
        if h is not None and h.depth >= 3 and not any(lv.tie.is_first for lv in h.levels):
            return True
    return False


def check_config(cfg: TrainConfig) -> None:
    """The option checks that need no data or checkpoint (one-line errors): ``bitvote train
    --nproc`` runs them once before it launches the workers."""
    if cfg.agc is not None and not (math.isfinite(cfg.agc) and cfg.agc >= 0):
        raise BitvoteError(f"--agc must be a non-negative number, got {cfg.agc}")
    if cfg.step not in (1, 2):
        raise BitvoteError(f"--step must be 1 or 2, got {cfg.step}")
    if cfg.schedule not in SCHEDULES:
        raise BitvoteError(f"unknown schedule {cfg.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    for k in ("epochs", "batch_size", "eval_every"):
        if getattr(cfg, k) < 1:
            raise BitvoteError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(cfg, k)}")
    if not 0 < cfg.lr < math.inf:
        raise BitvoteError(f"--lr must be a positive finite number, got {cfg.lr}")
    for k in ("subset", "test_subset", "threads"):
        if getattr(cfg, k) is not None and getattr(cfg, k) < 1:
            raise BitvoteError(f"--{k.replace('_', '-')} must be at least 1, got {getattr(cfg, k)}")
    for k in ("ckpt_every_steps", "stop_after_steps"):
        if getattr(cfg, k) < 0:
            raise BitvoteError(f"--{k.replace('_', '-')} must be 0 (off) or positive, got {getattr(cfg, k)}")
    if not 0 <= cfg.ckpt_every_s < math.inf:
        raise BitvoteError(f"--ckpt-every must be a number of seconds >= 0, got {cfg.ckpt_every_s}")
    if cfg.wd is not None and not 0 <= cfg.wd < math.inf:
        raise BitvoteError(f"--wd must be a non-negative finite number, got {cfg.wd}")
    if not 0 <= cfg.label_smoothing < 1:
        raise BitvoteError(f"--label-smoothing must be in [0, 1), got {cfg.label_smoothing}")
    if cfg.self_distill and not cfg.init:
        raise BitvoteError("--self-distill needs --init: the checkpoint retrained from is the teacher")
    if cfg.self_distill and cfg.teacher:
        raise BitvoteError("--self-distill and --teacher both name a teacher: give one")
    if isinstance(cfg.recalibrate_bn, bool) or not isinstance(cfg.recalibrate_bn, int) or cfg.recalibrate_bn < 0:
        raise BitvoteError(f"--recalibrate-bn must be 0 (off) or a number of images, got {cfg.recalibrate_bn!r}")
    if isinstance(cfg.patience, bool) or not isinstance(cfg.patience, int) or cfg.patience < 0:
        raise BitvoteError(f"--patience must be 0 (off) or a number of epochs, got {cfg.patience!r}")
    if not 0 <= cfg.min_delta < 1:
        raise BitvoteError(f"--min-delta must be in [0, 1), got {cfg.min_delta}")
    if cfg.progressive is not None and not str(cfg.progressive).strip():
        raise BitvoteError("--progressive: give 'layers' or voters before the target, e.g. 'mv;tap'")
    if cfg.weight_grad not in WEIGHT_GRADS:
        raise BitvoteError(f"--weight-grad must be one of {', '.join(WEIGHT_GRADS)}, got {cfg.weight_grad!r}")
    if cfg.label_smoothing and cfg.teacher:
        raise BitvoteError("--label-smoothing has no effect with --teacher (the distribution loss has no labels)")


def _rng_state(device) -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict, device) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def optimizer_step(model, teacher, opt, x, y, lr, label_smoothing, dev, scale=1.0, amp=False, agc=None):
    """One optimizer step: cross-entropy, or the distribution loss against ``teacher``.

    ``scale`` weights this rank's mean loss by its share of the global batch (1.0 alone);
    ``agc`` is ``(clip factor, parameters)`` for unit-wise adaptive gradient clipping. Returns
    the detached loss and logits.
    """
    for g in opt.param_groups:
        g["lr"] = lr
    if dev.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)  # the model is channels_last on CUDA
    with autocast(dev, amp):
        logits = model(x)
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x)
            loss = distribution_loss(logits, t_logits)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    opt.zero_grad(set_to_none=True)
    (loss * scale if scale != 1.0 else loss).backward()
    if agc is not None:  # (clip factor, parameters): unit-wise AGC, the classifier left out
        adaptive_clip_grad_(agc[1], agc[0])
    opt.step()
    return loss.detach(), logits.detach()


def _write_logs(out: Path, history, result) -> None:
    write_csv(out / "log.csv", history)
    if result:
        atomic_write_bytes(out / "result.json", (json.dumps(result, indent=1) + "\n").encode())


def _finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _remove_stale_temps(out: Path) -> None:
    """Temp files of writes that a kill interrupted (``.last.pt.XXXX.tmp``): never read, so delete them."""
    for t in out.glob(".*.tmp"):
        try:
            t.unlink()
        except OSError:
            pass


def train(cfg: TrainConfig, *, _stop_after: Optional[int] = None) -> dict:
    """Run (or resume) a training run; returns the final test metrics and where things are.

    Under torchrun each process calls this and becomes one rank of the run. A run stopped by
    ``stop_after_steps`` returns ``{"finished": False, "step": ..., "last": ...}``.
    ``_stop_after`` (tests only) raises after that many global steps, like a kill would.
    """
    dev = device(cfg.device)
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise BitvoteError(f"--out {out} is a file, not a folder")
    world, dev = Dist.setup(dev)
    try:
        if world.main:  # one run per folder: rank 0 holds it (the other ranks never write)
            with hold_folder(out, "bitvote train"):
                return _Run(cfg, world, dev, _stop_after).run()
        return _Run(cfg, world, dev, _stop_after).run()
    finally:
        world.close()


def voter_stages(target, progressive: Optional[str], layer_names) -> list:
    """The voters a run trains through, in order, each for an equal share of its steps.

    ``progressive`` ``None``: the target alone. ``"V1;V2"``: V1, V2, then the target
    (e.g. ``mv;tap`` before ``tap,leaf=4``). ``"layers"``: the target converted one layer group
    (``layer1``, ``layer2``, ...) more per stage, the rest still popcount. Each stage is a plain
    voter (a spec or an exact-name mapping), so a checkpoint can rebuild it.
    """
    from ..models import parse_voter_map, spec_for

    if not progressive:
        return [target]
    if str(progressive).strip().lower() == "layers":
        groups = []
        for n in layer_names:
            if n.split(".")[0] not in groups:
                groups.append(n.split(".")[0])
        stages = []
        for i in range(1, len(groups)):
            stages.append({n: (spec_for(n, target) if n.split(".")[0] in groups[:i] else "popcount")
                           for n in layer_names})
        return stages + [target]
    chain = [parse_voter_map(v) for v in str(progressive).split(";") if v.strip()]
    if any(is_popcount(v) for v in chain if isinstance(v, str)):
        raise BitvoteError("--progressive: the run starts from its --init checkpoint's popcount; list voters only")
    return chain + [target]


def stage_at(step: int, total: int, k: int) -> int:
    """The stage of global step ``step`` when ``k`` stages share ``total`` steps equally; aligned
    to the end, so the last steps always train the target even when ``total < k``."""
    total = max(total, 1)
    return max(0, k - 1 - ((total - 1 - min(step, total - 1)) * k) // total)


def plateaued(losses, patience: int, min_delta: float) -> bool:
    """True when none of the last ``patience`` epochs' losses fell below ``(1 - min_delta)`` x
    the best loss before them: the loss has stopped falling."""
    if patience < 1 or len(losses) <= patience:
        return False
    best_before = min(losses[:-patience])
    return min(losses[-patience:]) > best_before * (1.0 - min_delta) if best_before > 0 else \
        min(losses[-patience:]) >= best_before


def _epoch_stats() -> dict:
    """The running sums of the epoch in progress (kept in ``last.pt`` for a mid-epoch resume)."""
    return {"loss": 0.0, "correct": 0.0, "seen": 0, "time": 0.0}


class _Run:
    """One invocation of a run: its state, and one short method per thing that advances it.

    The counters (``epoch``, ``batch``, ``gstep``), the epoch's running sums, the history and
    the best top-1 are what :meth:`state` writes to ``last.pt`` and :meth:`restore` reads back,
    so a resumed invocation continues exactly where the last one stopped. :meth:`run` is the
    whole sequence: open the folder, set up, then epochs of steps.
    """

    def __init__(self, cfg: TrainConfig, world, dev: torch.device, stop_after: Optional[int] = None):
        self.cfg, self.world, self.dev, self.stop_after = cfg, world, dev, stop_after
        self.out = Path(cfg.out)
        self.last = self.out / "last.pt"
        self.ck = None  # the checkpoint resumed from
        self.epoch, self.batch, self.gstep = 0, 0, 0
        self.steps_run = 0  # steps of this invocation (what stop_after_steps counts)
        self.history, self.best = [], -1.0
        self.stats = _epoch_stats()
        self.wall0 = 0.0  # wall time of the earlier invocations
        self.saved_step = None  # the step of the last checkpoint this run can fall back to
        self.stages, self.stage = None, -1  # the voter stages (a recipe's schedule) and the one in place
        self.stop_reason = "budget"

    def run(self) -> dict:
        res = self.open()
        if res is not None:
            return res
        self.prepare()
        self.load_data()
        self.build()
        self.restore()
        self.announce()
        self.t_start = self.last_ckpt_t = time.monotonic()
        while self.epoch < self.cfg.epochs:
            res = self.run_epoch()
            if res is not None:
                return res
        return self.ck.get("result") or {}  # pragma: no cover - a finished run returns above

    # -- setup -------------------------------------------------------------------------------
    def open(self) -> Optional[dict]:
        """Take over ``last.pt`` when resuming; the stored result when that run is finished."""
        if not self.last.exists():
            return None
        if not self.cfg.resume:
            raise BitvoteError(f"{self.out} already holds a run (last.pt): pass --resume to continue it "
                               f"or choose another --out")
        self.ck = C.load(self.last)
        self.cfg = resumed_config(self.cfg, self.ck, self.last)
        saved_epochs = (self.ck.get("args") or {}).get("epochs", self.ck["epoch"])
        if not self.ck.get("finished") or self.cfg.epochs > saved_epochs:  # a larger budget (--override)
            return None
        res = self.ck.get("result") or {}
        if self.world.main:
            _write_logs(self.out, self.ck.get("history") or [], res)  # in case a kill came right after last.pt
            if not self.cfg.quiet:
                print(f"bitvote: {self.out} is already finished: top1 {res.get('top1', 0):.2f}%", file=sys.stderr)
        return res

    def prepare(self) -> None:
        cfg, world = self.cfg, self.world
        check_config(cfg)
        if world.active and cfg.batch_size < world.size:
            raise BitvoteError(f"--batch-size {cfg.batch_size} (the global batch) is smaller than the "
                               f"{world.size} processes")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.dev.type == "cpu":
            heap.keep_freed_memory()
        # every rank checked last.pt before rank 0 may write one (DDP's constructor also waits)
        world.barrier()
        if world.main and self.out.is_dir():
            _remove_stale_temps(self.out)

    def load_data(self) -> None:
        """Both splits on the device; one process per machine may download, the others wait."""
        cfg, dev = self.cfg, self.dev

        def splits():
            tr = D.subset(D.load(cfg.dataset, "train", cfg.data, device=dev, download=cfg.download), cfg.subset,
                          cfg.seed)
            # test subsets use seed 0: every run (and `bitvote eval --test-subset`) sees the same images
            return tr, D.subset(D.load(cfg.dataset, "test", cfg.data, device=dev, download=False), cfg.test_subset)

        first = self.world.local_rank == 0
        if first:
            self.train_set, self.test_set = splits()
        self.world.barrier()
        if not first:
            self.train_set, self.test_set = splits()

    def build(self) -> None:
        """Model (fresh or from ``last.pt``), its DDP/compiled wrapper, teacher, AGC and optimizer."""
        cfg, dev = self.cfg, self.dev
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        if self.ck is not None:
            model = C.model_from_checkpoint(self.ck, self.last)
        else:
            model = build_model(cfg, self.train_set.num_classes)
        model.to(dev).train()
        if dev.type == "cuda":  # cuDNN's fast layout for bf16 convs; inputs follow in optimizer_step
            model = model.to(memory_format=torch.channels_last)
        set_weight_grad(model, cfg.weight_grad)
        self.model = model  # what is saved
        self.net = Dist.wrap(model, self.world, dev, cfg.sync_bn)  # what the step calls
        if cfg.compile:
            self.net = torch.compile(self.net)
        self.teacher = self.load_teacher()
        wd = cfg.wd if cfg.wd is not None else (1e-5 if cfg.step == 1 else 0.0)
        clip = cfg.agc if cfg.agc is not None else (0.04 if model.config.get("bn") == "free" else 0.0)
        self.agc = (clip, [p for n, p in model.named_parameters() if not n.startswith("fc.")]) if clip > 0 else None
        self.opt = make_optimizer(model, cfg.lr, wd)
        # drop_last, as ReActNet / AB-BNN; a tiny subset still gets one batch
        self.steps = max(1, len(self.train_set) // cfg.batch_size)
        self.total = cfg.epochs * self.steps
        if self.ck is None and (cfg.progressive or cfg.recalibrate_bn):
            from ..models import voter_layers

            self.stages = voter_stages(model.config["voter"], cfg.progressive, [n for n, _ in voter_layers(model)])

    def load_teacher(self) -> Optional[nn.Module]:
        """``--teacher``, or with ``self_distill`` the ``--init`` checkpoint as it was loaded (the
        parent being converted: a teacher that costs no extra training)."""
        cfg = self.cfg
        path = cfg.init if cfg.self_distill else cfg.teacher
        if not path:
            return None
        teacher, _ = C.load_model(path, self.dev)
        if teacher.config["num_classes"] != self.train_set.num_classes:
            raise BitvoteError(f"--teacher {path} has {teacher.config['num_classes']} classes, "
                               f"{cfg.dataset} has {self.train_set.num_classes}")
        return teacher.eval()

    def enter_stage(self) -> None:
        """Put the voter of the current step's stage in place (BN re-estimated when asked).

        Called before every step; it acts on the first step of a stage only. A resumed run
        knows its stage from ``last.pt``, and recalibration is deterministic, so a kill at a
        stage boundary replays the same switch.
        """
        if not self.stages:
            return
        k = stage_at(self.gstep, self.total, len(self.stages))
        if k == self.stage:
            return
        from ..models import set_voter
        cfg, model = self.cfg, self.model
        set_voter(model, self.stages[k], cfg.tie if cfg.tie is not None else model.config.get("tie"))
        if cfg.recalibrate_bn:
            recalibrate_bn(model, self.train_set, cfg.recalibrate_bn, seed=cfg.seed)
            model.train()
        self.stage = k
        if len(self.stages) > 1:
            from ..models import voter_map_text

            self.prog.note(f"bitvote train: step {self.gstep}: voter stage {k + 1}/{len(self.stages)}: "
                           f"{voter_map_text(self.stages[k])}")

    def restore(self) -> None:
        """Counters, sums, optimizer and RNG states of the checkpoint resumed from."""
        ck = self.ck
        if ck is None:
            return
        self.opt.load_state_dict(ck["optimizer"])
        self.epoch, self.batch, self.gstep = ck["epoch"], ck["batch"], ck["step"]
        self.history, self.best = list(ck.get("history") or []), float(ck.get("best_top1", -1.0))
        self.stats = dict(ck.get("epoch_stats") or self.stats)
        self.wall0 = float(ck.get("wall_s", 0.0))
        self.stages, self.stage = ck.get("voter_stages"), int(ck.get("voter_stage", -1))
        _set_rng_state(ck["rng"], self.dev)
        self.saved_step = self.gstep

    def announce(self) -> None:
        cfg, world, model = self.cfg, self.world, self.model
        quiet = cfg.quiet or not world.main
        self.prog = Progress(cfg.epochs, self.steps, quiet=quiet)
        if quiet:
            return
        where = (f"resuming {self.last} at epoch {self.epoch + 1}, batch {self.batch}" if self.ck is not None
                 else f"writing {self.out}")
        procs = f", {world.size} processes ({world.backend}), global batch {cfg.batch_size}" if world.active else ""
        self.prog.note(f"bitvote train: {model.config['name']} width {model.config['width']} voter "
                       f"{model.config['voter']} step {cfg.step} on {cfg.dataset} ({len(self.train_set)} train / "
                       f"{len(self.test_set)} test images, {self.dev}{procs}); {where}")
        if biased_deep_hierarchy(model):
            self.prog.note("bitvote train: note: a hierarchy of 3+ levels with a fixed tie (+1/-1) at every level "
                           "compounds the tie's bias; votes can become constant and training diverge: consider --tie first")

    # -- checkpoints -------------------------------------------------------------------------
    def state(self, finished: bool = False, result: Optional[dict] = None) -> dict:
        """Everything ``last.pt`` holds: with it (and the data), the next step is determined."""
        cfg = self.cfg
        return C.model_checkpoint(
            self.model, dataset=cfg.dataset, optimizer=self.opt.state_dict(),
            scheduler={"kind": cfg.schedule, "base_lr": cfg.lr, "total_steps": self.total},
            epoch=self.epoch, batch=self.batch, step=self.gstep, rng=_rng_state(self.dev), data_seed=cfg.seed,
            args=cfg.to_dict(), history=self.history, best_top1=self.best, epoch_stats=dict(self.stats),
            wall_s=self.wall_s(), finished=finished, result=result, world_size=self.world.size,
            voter_stages=self.stages, voter_stage=self.stage,
        )

    def wall_s(self) -> float:
        return self.wall0 + time.monotonic() - self.t_start

    def save(self, paths, finished: bool = False, result: Optional[dict] = None) -> None:
        """Checkpoint (rank 0 writes; every rank takes part in the buffer sync)."""
        Dist.sync_buffers(self.model, self.world)
        if not _finite(self.model):
            raise self.diverged("the weights are not finite")
        if self.world.main:
            st = self.state(finished, result)
            for p in paths:
                C.save(p, st)
        self.saved_step = self.gstep

    def diverged(self, what: str, at: Optional[int] = None) -> BitvoteError:
        """The one-line error of a non-finite run (``at``: the 1-based step that failed)."""
        at = self.gstep if at is None else at
        kept = (f"kept the last good checkpoint {self.last} (step {self.saved_step})" if self.saved_step is not None
                else "no checkpoint was written yet")
        return BitvoteError(f"training diverged at step {at} (epoch {self.epoch + 1}): {what}; {kept}; "
                            f"try a lower --lr")

    # -- the loop ----------------------------------------------------------------------------
    def run_epoch(self) -> Optional[dict]:
        """The rest of the current epoch; a dict when this invocation ends (finished or stopped)."""
        cfg = self.cfg
        plan = D.epoch_plan(len(self.train_set), cfg.seed, self.epoch)
        self.t_epoch = time.monotonic()
        while self.batch < self.steps:
            self.enter_stage()
            self.train_step(plan)
            stop = bool(cfg.stop_after_steps) and self.steps_run >= cfg.stop_after_steps
            self.checkpoint_if_due(stop)
            if self.stop_after is not None and self.steps_run >= self.stop_after:
                raise SimulatedKill(f"stopped after {self.steps_run} steps")
            if stop and self.batch < self.steps:
                return self.stopped()
        return self.end_epoch()

    def train_step(self, plan) -> None:
        """One global step on batch ``self.batch`` of the epoch's permutation, then its statistics."""
        cfg, world, dev = self.cfg, self.world, self.dev
        perm, dy, dx, flip = plan
        B, N = cfg.batch_size, len(self.train_set)
        idx = Dist.shard(perm[self.batch * B : (self.batch + 1) * B], world)
        x = D.augment(self.train_set.x[idx.to(dev)], dy[idx], dx[idx], flip[idx])
        x = D.normalize(x, cfg.dataset)
        y = self.train_set.y[idx.to(dev)]
        try:
            loss, logits = optimizer_step(self.net, self.teacher, self.opt, x, y,
                                 lr_at(self.gstep, self.total, cfg.lr, cfg.schedule), cfg.label_smoothing, dev,
                                 Dist.loss_scale(len(idx), min(B, N), world), cfg.amp, self.agc)
        except (BitvoteError, RuntimeError) as e:  # e.g. "NaN in the input of a binarizer"
            if not _finite(self.model):
                raise self.diverged("the weights are not finite", self.gstep + 1) from None
            if "overflow" in str(e):  # Adam's step size lr / (1 - beta1^t) overflows float32
                raise self.diverged(f"the update overflows ({e})", self.gstep + 1) from None
            raise
        self.batch += 1
        self.gstep += 1
        self.steps_run += 1
        self.record(loss, logits, y, len(idx))

    def record(self, loss, logits, y, n: int) -> None:
        """Add the step's loss and hits (summed over the ranks) to the epoch's sums; progress."""
        world, stats = self.world, self.stats
        if world.active:
            l_sum, c_sum, n_sum = Dist.all_sum([float(loss) * n, float((logits.argmax(1) == y).sum()), n],
                                               world, self.dev)
            step_loss = l_sum / max(n_sum, 1)
        else:
            step_loss = float(loss)
            l_sum, c_sum, n_sum = step_loss * n, float((logits.argmax(1) == y).sum()), n
        if not math.isfinite(step_loss):
            raise self.diverged(f"the loss is {step_loss}")
        stats["loss"] += l_sum
        stats["correct"] += c_sum
        stats["seen"] += int(n_sum)
        elapsed = stats["time"] + time.monotonic() - self.t_epoch
        ips = stats["seen"] / max(elapsed, 1e-9)
        self.prog.update(self.epoch, self.batch, stats["loss"] / stats["seen"], stats["correct"] / stats["seen"], ips,
                         (self.total - self.gstep) * self.cfg.batch_size / max(ips, 1e-9))

    def checkpoint_if_due(self, stop: bool) -> None:
        """A mid-epoch ``last.pt`` every ``ckpt_every_steps`` steps / ``ckpt_every_s`` seconds, or
        before a stop; the epoch's end writes its own."""
        cfg = self.cfg
        now = time.monotonic()
        due = (cfg.ckpt_every_steps and self.gstep % cfg.ckpt_every_steps == 0) or \
            now - self.last_ckpt_t >= cfg.ckpt_every_s
        if self.world.active:  # ranks must agree on a time-based checkpoint: rank 0's clock decides
            flag = torch.tensor([int(bool(due))], device=self.dev)
            torch.distributed.broadcast(flag, 0)
            due = bool(flag.item())
        if (due or stop) and self.batch < self.steps:
            self.stats["time"] += now - self.t_epoch
            self.t_epoch = now
            self.save([self.last])
            self.last_ckpt_t = time.monotonic()

    def end_epoch(self) -> Optional[dict]:
        """Evaluate (when due), log the epoch, write best.pt / last.pt; the result when finished."""
        cfg, stats = self.cfg, self.stats
        stats["time"] += time.monotonic() - self.t_epoch
        row = {"epoch": self.epoch + 1, "step": self.gstep,
               "lr": lr_at(self.gstep - 1, self.total, cfg.lr, cfg.schedule),
               "train_loss": stats["loss"] / max(stats["seen"], 1),
               "train_acc": 100.0 * stats["correct"] / max(stats["seen"], 1),
               "images_per_s": stats["seen"] / max(stats["time"], 1e-9), "epoch_s": stats["time"],
               "test_top1": None, "test_top5": None}
        losses = [h["train_loss"] for h in self.history] + [row["train_loss"]]
        plateau = self.epoch + 1 < cfg.epochs and plateaued(losses, cfg.patience, cfg.min_delta)
        if (self.epoch + 1) % cfg.eval_every == 0 or self.epoch + 1 == cfg.epochs or plateau:
            Dist.sync_buffers(self.model, self.world)
            ev = _evaluate_world(self.model, self.test_set, self.world, self.dev)
            row["test_top1"], row["test_top5"] = ev["top1"], ev["top5"]
        self.epoch, self.batch = self.epoch + 1, 0
        self.stats = _epoch_stats()
        row["wall_s"] = self.wall_s()
        self.history.append(row)
        improved = row["test_top1"] is not None and row["test_top1"] > self.best
        if improved:
            self.best = row["test_top1"]
        if plateau:
            self.stop_reason = "plateau"
        finished = self.epoch == cfg.epochs or plateau
        result = self.result(row) if finished else None
        # best.pt before last.pt: a kill in between replays the epoch and rewrites both
        self.save(([self.out / "best.pt"] if improved else []) + [self.last], finished, result)
        self.last_ckpt_t = time.monotonic()
        if self.world.main:
            _write_logs(self.out, self.history, result)
        self.prog.epoch_end(row, (cfg.epochs - self.epoch) * row["epoch_s"])
        if finished:
            self.world.barrier()  # no rank leaves before rank 0 has written the final files
            return result
        if cfg.stop_after_steps and self.steps_run >= cfg.stop_after_steps:
            return self.stopped()
        return None

    def result(self, row: dict) -> dict:
        """What a finished run returns (and ``result.json`` holds)."""
        cfg, model = self.cfg, self.model
        return {"top1": row["test_top1"], "top5": row["test_top5"], "best_top1": self.best,
                "model": model.config["name"], "voter": model.config["voter"], "width": model.config["width"],
                "dataset": cfg.dataset, "n": len(self.test_set), "epochs": cfg.epochs, "step": cfg.step,
                "train_images": len(self.train_set), "wall_s": row["wall_s"], "out": str(self.out),
                "last": str(self.last), "best": str(self.out / "best.pt"), "epochs_run": self.epoch,
                "stopped": self.stop_reason}

    def stopped(self) -> dict:
        """End an invocation cut short by ``stop_after_steps`` (``last.pt`` is written)."""
        self.world.barrier()
        if not self.cfg.quiet and self.world.main:
            print(f"bitvote: stopped after {self.cfg.stop_after_steps} steps at step {self.gstep}; "
                  f"continue with --resume (reads {self.last})", file=sys.stderr)
        return {"finished": False, "step": self.gstep, "epoch": self.epoch, "batch": self.batch,
                "last": str(self.last), "out": str(self.out)}
