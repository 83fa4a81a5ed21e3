"""RHO-LOSS's irreducible-loss (IL) model: trained once, its per-example losses cached, keyed by example id.

The IL model is the baseline of the same architecture trained through the same loop (`ntng.training.loop.pretrain`, which
the run hands to `Method.prepare`) on the
20% hold-out split (`ntng.data.splits`) under its own RST budget. Its loss on every window of the other 80% (the RHO-LOSS
run's training windows) is then computed once, with one fixed masking, and stored with the windows' stable ids:

    <data_dir>/<corpus>/il/<packing>/<rst table>-<budget>-seed<k>/
        run/            the IL model's own run directory (config, metrics, summary, checkpoint)
        losses.npz      example_ids (sorted) and il_losses
        il.json         what was built: budgets, RST and wall costs, the data fingerprint
The cache lives with the data it was computed from, so every RHO-LOSS run over that data (any seed, any budget)
reuses it; a lock file keeps two runs from building it at once. Its RST is a separate, reported cost, not part of
the RHO-LOSS run's budget (as in the paper).
"""

from __future__ import annotations

import fcntl
import json
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ntng.data import corpus as data_mod
from ntng.data.batches import concat_batches, make_collator
from ntng.data.splits import select_split
from ntng.errors import RunError
from ntng.files import atomic_path, write_text_atomic
from ntng.models.pretraining import build_model
from ntng.presets import format_budget
from ntng.training.device import autocast_dtype, pick_device

IL_MASK_SEED = 20230712  # seeds each window's one masking for its IL loss (see collate_by_id)


def il_cache_dir(spec, budget_s: float, seed: int) -> Path:
    packing = data_mod.packing_name(spec.model, spec.preset)
    return Path(spec.data_dir) / spec.corpus / "il" / packing / f"{spec.table.name}-{format_budget(budget_s)}-seed{seed}"


@contextmanager
def _locked(directory: Path):
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def lookup_il_losses(example_ids: torch.Tensor, table_ids: np.ndarray, table_losses: np.ndarray) -> torch.Tensor:
    """The IL loss of each example id (table_ids sorted ascending); an id with no IL loss is an error."""
    ids = example_ids.numpy()
    at = np.searchsorted(table_ids, ids)
    found = (at < len(table_ids)) & (table_ids[np.minimum(at, len(table_ids) - 1)] == ids)
    if not found.all():
        missing = ids[~found][0]
        raise RunError(f"no irreducible loss for example id {missing}: the IL losses were computed on other data")
    return torch.from_numpy(table_losses[at]).float()


def collate_by_id(collator, windows: np.ndarray, example_ids: np.ndarray) -> dict:
    """Collate each window with masks drawn from a generator seeded by its own id: a window's masking (and so its
    IL loss) depends on the window alone, not on its neighbours or its place in any order."""
    rows = []
    for window, example_id in zip(windows, example_ids, strict=True):
        collator.generator.manual_seed((IL_MASK_SEED * 1_000_003 + int(example_id)) % (1 << 63))
        rows.append(collator(torch.from_numpy(window[None]).long()))
    return concat_batches(rows)


@torch.no_grad()
def compute_il_losses(model, example_ids: np.ndarray, windows: np.ndarray, collator, micro_batch: int,
                      device: torch.device, amp_dtype) -> tuple[np.ndarray, int]:
    """(losses in the order of `windows`, scoring passes run). Passes of `micro_batch` sequences, as the RST table
    prices them; the last one is padded with the first windows and the extra losses dropped."""
    model.eval()
    losses = np.empty(len(windows), dtype=np.float32)
    passes = 0
    for start in range(0, len(windows), micro_batch):
        rows = np.arange(start, start + micro_batch) % len(windows)
        batch = collate_by_id(collator, windows[rows], example_ids[rows])
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            out = model({k: v.to(device) for k, v in batch.items()})["per_example_loss"].float().cpu().numpy()
        count = min(micro_batch, len(windows) - start)
        losses[start:start + count] = out[:count]
        passes += 1
    return losses, passes


def ensure_il_losses(spec, budget_s: float, seed: int, pretrain, log=print) -> tuple[np.ndarray, np.ndarray, dict]:
    """(sorted example ids, their IL losses, facts for summary.json) for the RHO-LOSS run `spec`, trained and
    computed on first use, read from the cache afterwards. `pretrain` is the loop (`ntng.training.loop.pretrain`, handed in
    by the run being prepared): the IL model trains through the one loop without this module importing it."""
    cache = il_cache_dir(spec, budget_s, seed)
    packed = data_mod.load_packed(spec.model, spec.preset, spec.data_dir, spec.corpus)
    fingerprint = data_mod.fingerprint_windows(packed["train"])
    with _locked(cache):
        info_path, losses_path = cache / "il.json", cache / "losses.npz"
        if info_path.exists() and losses_path.exists():
            info = json.loads(info_path.read_text())
            if info.get("train_fingerprint") == fingerprint:
                with np.load(losses_path) as stored:
                    ids, losses = stored["example_ids"], stored["il_losses"]
                log(f"IL model: reusing {cache} ({len(ids):,} losses, {info['rst_s']:.1f} s RST to train)")
                return ids, losses, {**info, "reused": True}
            log(f"IL model: {cache} was built from other data; rebuilding it")

        run_dir = cache / "run"
        summary_path = run_dir / "summary.json"
        status = json.loads(summary_path.read_text()).get("status") if summary_path.exists() else None
        if status != "complete":
            resume = (run_dir / "checkpoint.pt").exists() and (run_dir / "config.json").exists()
            log(f"IL model: {'resuming' if resume else 'training'} the baseline on the {spec.model} hold-out "
                f"split for {format_budget(budget_s)} RST -> {run_dir}")
            summary = pretrain(model=spec.model, method="baseline", budget=format_budget(budget_s), preset=spec.preset,
                               seed=seed, out_dir=run_dir, resume=resume, rst_table=spec.table_path,
                               data_dir=spec.data_dir, corpus=spec.corpus, data_split="rho_holdout",
                               log=lambda m: log(f"IL model: {m}"))
        else:
            summary = json.loads(summary_path.read_text())
        if summary["status"] != "complete":
            raise RunError(f"the IL model's run in {run_dir} ended {summary['status']}: {summary.get('error', '')}")

        device = pick_device()
        amp_dtype = autocast_dtype(device, spec.preset.precision)
        checkpoint = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
        vocab_size = data_mod.load_tokenizer(spec.model, spec.preset.vocab_size, spec.data_dir,
                                             spec.corpus).get_vocab_size()
        model = build_model(spec.model, spec.preset, vocab_size=vocab_size).to(device)
        model.load_state_dict(checkpoint["model"])
        train_ids, train_windows = data_mod.windows_array(packed["train"])
        ids, windows = select_split(train_ids, train_windows, "rho_main")
        order = np.argsort(ids, kind="stable")
        ids, windows = ids[order], windows[order]
        started = time.perf_counter()
        collator = make_collator(spec.model, spec.preset, vocab_size, seed=IL_MASK_SEED)
        micro_batch = spec.preset.shape(spec.model).micro_batch
        losses, passes = compute_il_losses(model, ids, windows, collator, micro_batch, device, amp_dtype)
        info = {
            "cache": str(cache), "run_dir": str(run_dir), "budget_rst_s": budget_s, "seed": seed,
            "rst_s": summary["rst_s"], "wall_s": summary["wall_s"], "steps": summary["steps"],
            "final_val_loss": summary["final_val_loss"], "data_split": "rho_holdout",
            # the pass over the 80% that gives every example its IL loss, priced like any scoring pass
            "scoring_passes": passes, "scoring_rst_s": passes * spec.table.forward_seconds(model.num_layers),
            "scoring_wall_s": time.perf_counter() - started, "examples": len(ids),
            "mean_il_loss": float(losses.mean()), "rst_table": spec.table.name, "train_fingerprint": fingerprint,
            "mask_seed": IL_MASK_SEED,
        }
        with atomic_path(losses_path) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
            np.savez(fh, example_ids=ids, il_losses=losses)
        write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")
        log(f"IL model: {len(ids):,} losses computed in {info['scoring_wall_s']:.1f} s wall "
            f"({info['scoring_rst_s']:.1f} s RST), mean {info['mean_il_loss']:.4f}")
        return ids, losses, {**info, "reused": False}
