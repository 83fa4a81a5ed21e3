"""Writes the committed notebooks (no outputs) from the cell sources below: `python tools/make_notebooks.py`.

Notebooks stay thin: a `parameters` cell (papermill), one call into ntng, a few plots. Keeping their source here
makes review diffs readable and guarantees they are committed clean.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
KERNEL = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
          "language_info": {"name": "python"}}


def parameters(source: str):
    return new_code_cell(source.strip(), metadata={"tags": ["parameters"]})


NOTEBOOKS = {
    "pretrain.ipynb": [
        new_markdown_cell("# Pre-train one model with one method under an RST budget\n\n"
                          "Run it as is, or through papermill: `papermill notebooks/pretrain.ipynb out.ipynb "
                          "-p model t5 -p budget 40s`. The run directory (config.json, metrics.csv, summary.json, "
                          "checkpoint.pt) is written by `ntng.pretrain`, the same function as `ntng pretrain`."),
        parameters('''
model: str = "bert"  # bert | t5
method: str = "baseline"  # baseline | layer_stacking | ... | sophia, or a variant such as sophia+free_hessian
budget: str = "20s"  # RST budget with a unit: 20s, 10m, 6h
preset: str = "smoke"  # smoke | mini | paper
seed: int = 0  # seeds model initialisation, data order and masking
out_dir: str = ""  # run directory; empty: results/<preset>/<model>/<method>/<budget>/seed<seed>
resume: bool = False  # continue the interrupted run in out_dir
rst_table: str = ""  # RST table JSON (from `ntng calibrate`) to charge with; empty: the preset's own table
free_scoring: bool = False  # ablation: batch-selection scoring passes cost no RST
free_hessian: bool = False  # ablation: Sophia's Hessian passes cost no RST
data_dir: str = ""  # data directory; empty: ./data or $NTNG_DATA_DIR
data_split: str = ""  # training windows: full | rho_main (RHO-LOSS's 80%); empty: the method's own
finetune: bool = False  # then fine-tune the complete run on the offline tasks (ntng.finetune) in this kernel
settings: str = ""  # --set for the notebook: KEY=VALUE pairs separated by spaces, e.g. "lr=0.0003 recipe.grad_clip=1"
'''),
        new_code_cell('''import ntng
from ntng.training.variants import with_settings

summary = ntng.pretrain(model=model, method=with_settings(method, settings.split()), budget=budget, preset=preset,
                        seed=seed, out_dir=out_dir or None, resume=resume, rst_table=rst_table or None,
                        free_scoring=free_scoring, free_hessian=free_hessian, data_dir=data_dir or None,
                        data_split=data_split or None)
{k: summary[k] for k in ("status", "steps", "rst_s", "wall_s", "tokens", "final_val_loss", "run_dir")}'''),
        new_code_cell('''import matplotlib.pyplot as plt
import seaborn as sns

metrics = ntng.read_metrics(summary["run_dir"])
fig, (ax_loss, ax_lr) = plt.subplots(1, 2, figsize=(11, 3.8))
sns.lineplot(data=metrics.dropna(subset=["train_loss"]), x="rst_s", y="train_loss", ax=ax_loss, label="train",
             alpha=0.6)
sns.lineplot(data=metrics.dropna(subset=["val_loss"]), x="rst_s", y="val_loss", ax=ax_loss, label="validation",
             marker="o")
ax_loss.set(xlabel="RST (s)", ylabel="loss", title=f"{model} / {method}: loss against the RST budget")
sns.lineplot(data=metrics.dropna(subset=["lr"]), x="rst_s", y="lr", ax=ax_lr)
ax_lr.set(xlabel="RST (s)", ylabel="learning rate", title="schedule: a function of the budget fraction")
fig.tight_layout()'''),
        new_code_cell('''# Fine-tuning here, not in notebooks/finetune.ipynb, spares a grid cell a second kernel start (imports).
downstream = {}
if finetune and summary["status"] == "complete":
    downstream = ntng.finetune(summary["run_dir"], data_dir=data_dir or None)
{task: (r["metric"], round(r["best_dev_score"], 4), "floor", round(r["floor"]["best_dev_score"], 4))
 for task, r in downstream.items()}'''),
    ],
    "calibrate.ipynb": [
        new_markdown_cell("# Calibrate an RST table on this machine\n\n"
                          "Times each unit of work (forward+backward and forward-only micro-batches by active "
                          "layers, one optimizer step) and writes a table that `ntng pretrain --rst-table` accepts."),
        parameters('''
preset: str = "smoke"  # smoke | mini | paper
model: str = "bert"  # bert | t5
out: str = "rst-table.json"  # where to write the table (JSON)
repeats: int = 7  # timed runs per unit; the table keeps their median
'''),
        new_code_cell('''import ntng

table = ntng.calibrate(preset, model, out=out, repeats=repeats)
{k: table[k] for k in ("name", "precision", "micro_batch", "fit")}'''),
        new_code_cell('''import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

rows = [{"unit": unit, "active_layers": int(n), "seconds": m["median"], "low": m["min"], "high": m["max"],
         "charged": table["units"][unit][n]}
        for unit in ("train", "forward") for n, m in table["measured"][unit].items()]
frame = pd.DataFrame(rows)
ax = sns.scatterplot(data=frame, x="active_layers", y="seconds", hue="unit")
for unit, part in frame.groupby("unit"):
    ax.vlines(part["active_layers"], part["low"], part["high"], alpha=0.4)
    ax.plot(part["active_layers"], part["charged"], linestyle="--", label=f"{unit}: charged (fit)")
ax.set(title=f"{model} at {preset}: seconds per micro-batch (median, min-max) and the fitted table",
       xlabel="active layers", ylabel="seconds")
ax.legend()'''),
    ],
    "finetune.ipynb": [
        new_markdown_cell("# Fine-tune a pre-trained run on downstream tasks\n\n"
                          "BERT gets a pooled classification head, T5 learns the label words as text targets "
                          "(predicted by rank classification). The floor is the same architecture fine-tuned from "
                          "random initialisation with the same recipe and seed. The default tasks (spam_ham, "
                          "brown_genre, sotu_party) are an **offline stand-in for GLUE**, not GLUE. Results land in "
                          "`RUN/finetune/<task>.json`, written by `ntng.finetune`, the same function as "
                          "`ntng finetune`. Fine-tuning costs wall time only; it is not part of the RST budget."),
        parameters('''
run_dir: str = "results/smoke/bert/baseline/20s/seed0"  # a complete pre-training run directory
tasks: str = ""  # comma-separated task names; empty: the offline stand-in for GLUE (spam_ham,brown_genre,sotu_party)
data_dir: str = ""  # data directory; empty: the one the run was trained from
'''),
        new_code_cell('''import ntng

results = ntng.finetune(run_dir, tasks=[t.strip() for t in tasks.split(",") if t.strip()] or None,
                        data_dir=data_dir or None)
{task: (r["suite"], r["metric"], round(r["best_dev_score"], 4), round(r["floor"]["best_dev_score"], 4))
 for task, r in results.items()}'''),
        new_code_cell('''import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

rows = [{"task": f"{task}\\n({r['metric']})", "epoch": e["epoch"], "dev score": e["dev_score"], "model": which}
        for task, r in results.items()
        for which, part in (("pre-trained", r), ("random init (floor)", r["floor"])) for e in part["epochs"]]
grid = sns.relplot(data=pd.DataFrame(rows), x="epoch", y="dev score", hue="model", col="task", kind="line",
                   marker="o", height=3, facet_kws={"sharey": False})
suites = sorted({r["suite"] for r in results.values()})
grid.figure.suptitle(f"dev score per epoch: {', '.join(suites)}", y=1.05)
plt.show()'''),
    ],
    "your_method.ipynb": [
        new_markdown_cell("# Your own method: is it faster under a fair budget?\n\n"
                          "A method is a subclass of `ntng.methods.base.Method` in a module of your own "
                          "(docs/methods.md has the hook contract). Here: **frozen embeddings**, which keeps the "
                          "input embeddings out of the update for the first 20% of the RST budget. It changes "
                          "training through one hook (`before_update`) and does no extra pass, so it pays nothing "
                          "beyond the baseline's steps. `ntng.compare` runs it and the baseline at the same preset, "
                          "budgets and seeds, and reads the verdict from the records."),
        parameters('''
preset: str = "smoke"  # smoke | a custom preset | paper
budgets: str = "3s"  # comma-separated RST budgets
seeds: str = "0,1,2"  # comma-separated seeds: a verdict needs at least two
results: str = "results"  # where the runs go (complete ones are reused)
data_dir: str = ""  # data directory; empty: ./data or $NTNG_DATA_DIR
'''),
        new_code_cell('''%%writefile my_method.py
from ntng.methods.base import Method


class FreezeEmbeddings(Method):
    """No update to the input embeddings for the first `fraction` of the RST budget."""

    name = "freeze_embeddings"  # names its run directories
    label = "frozen embeddings"
    family = "warm_start"  # a family of its own: the book gives it a chapter under "Other methods"
    component, action = "model", "restrict"  # the survey's taxonomy
    summary = "no update to the input embeddings early in the budget"

    def __init__(self, model, preset, fraction: float = 0.2):
        super().__init__(model, preset)
        self.fraction = float(fraction)

    def settings(self):
        return {"fraction": self.fraction}

    def before_update(self, run):
        if run.clock.budget_fraction < self.fraction:
            embeddings = run.model.embeddings.word if run.model_name == "bert" else run.model.hf.shared
            embeddings.weight.grad = None  # left out of this update'''),
        new_code_cell('''import os

import ntng
from ntng.book.comparison import format_comparison

# the grid runs each cell in a kernel of its own: they find my_method.py through PYTHONPATH
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
result = ntng.compare("my_method:FreezeEmbeddings", models=["bert"], budgets=budgets.split(","),
                      seeds=[int(s) for s in seeds.split(",")], preset=preset, results=results,
                      data_dir=data_dir or None, jobs=2)
print(format_comparison(result))'''),
        new_markdown_cell("Reading the verdict: *faster* / *slower* only when the 95% interval of the paired "
                          "difference excludes zero; *detectable* is that interval's half-width, the smallest "
                          "difference these seeds can tell from seed noise. With more seeds (`seeds`) it shrinks. "
                          "The same from a shell: `ntng compare --method my_method:FreezeEmbeddings --set "
                          "fraction=0.2 --claim 1.1x` (with the current directory on `PYTHONPATH`)."),
        new_code_cell('''{(r.model, r.budget): (r.verdict, round(r.difference, 4), round(r.detectable, 4))
 for r in result.results}'''),
    ],
}


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata=KERNEL)
        for i, cell in enumerate(nb.cells):  # stable ids: rewriting a notebook changes only what changed
            cell.id = f"{Path(name).stem}-{i}"
        nbformat.validate(nb)
        nbformat.write(nb, ROOT / "notebooks" / name)
        print(f"wrote notebooks/{name}")


if __name__ == "__main__":
    main()
