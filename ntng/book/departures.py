"""Where ntng departs from the paper (Kaddour et al. 2023) and its official code, in one list.

The book's "Departures from the paper" page is generated from `DEPARTURES`; a figure a departure quotes is
computed when the page is built (`forward_train_ratios` reads the RST tables), never typed here. Add an entry
whenever ntng knowingly does something other than the paper does.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Departure:
    what: str  # the thing that differs, in a few words
    paper: str  # where the paper (or its code) stands
    ntng: str  # what ntng does instead
    why: str  # why
    effect: str  # the expected effect on the comparison


DEPARTURES: tuple[Departure, ...] = (
    Departure(
        what="BERT Sophia's Hessian estimate",
        paper="The official BERT loop samples labels from the encoder's hidden states (its sparse-prediction "
              "forward returns them under the key `logits`) and zeroes the gradient between its 6 Hessian "
              "micro-batches, so only the last one counts.",
        ntng="Samples labels from the model's own softmax over the vocabulary at the masked positions and "
             "accumulates every Hessian micro-batch (the Gauss-Newton-Bartlett estimator Sophia-G defines).",
        why="The official estimate is a bug, not a choice; re-evaluating Sophia means running Sophia.",
        effect="If anything in Sophia's favour: its pre-conditioner sees real curvature. The paper's verdict on "
               "BERT Sophia was reached with the broken estimate."),
    Departure(
        what="Forward cost relative to a training pass (CPU tables)",
        paper="On the RTX 3090, a forward pass of the full crammed BERT costs {paper_bert} of a forward+backward "
              "micro-batch.",
        ntng="The CPU tables that smoke and mini charge price it at {cpu}.",
        why="Measured, not chosen: on these CPUs the backward pass is relatively dearer than on a GPU.",
        effect="Scoring passes are relatively cheaper here, which favours batch selection (selective backprop, "
               "RHO-LOSS) against the paper's setting; the paper's own tables are used at preset `paper`."),
    Departure(
        what="Batch selection on T5",
        paper="Selective backprop and RHO-LOSS were evaluated on BERT only.",
        ntng="Also runs them on T5 (per-sequence loss over the span-corruption targets), reported beside BERT.",
        why="An extension: the same question for the second model family costs one more row of the grid.",
        effect="No paper result to compare with; read T5 batch selection as new evidence, not a reproduction. "
               "The ablations (free scoring) run on BERT only, as in the paper."),
    Departure(
        what="MLM masking",
        paper="Cramming masks each token independently with probability 15% (a Bernoulli draw per token), with "
              "the 80/10/10 rule.",
        ntng="Selects exactly round(15% of the maskable tokens) positions per sequence, with the 80/10/10 rule.",
        why="Sparse prediction then runs on a fixed number of positions per sequence: batches have one shape and "
            "the per-sequence losses that batch selection ranks are means over the same count.",
        effect="The same expected masking rate with less variance per sequence; no effect on the comparison "
               "between methods, which all share the collator."),
    Departure(
        what="Pre-training corpus and downstream tasks",
        paper="C4 (and MiniPile, The Pile for batch selection); GLUE and SuperGLUE for BERT, "
              "Super-NaturalInstructions for T5.",
        ntng="Offline: State of the Union addresses, Moby Dick, the Brown corpus and ~100k English sentences "
             "(~6M tokens); downstream stand-ins spam/ham, Brown genre and SOTU party. The same loaders take C4 and "
             "GLUE/SuperGLUE through `datasets` where a hub is reachable.",
        why="These machines reach no dataset hub.",
        effect="Absolute losses and scores are not comparable with the paper's; comparisons between methods "
               "under one budget are what carries over."),
    Departure(
        what="Model scale and hardware at the CPU presets",
        paper="Crammed BERT 16x768 on an RTX 3090 and t5-v1.1-base on an A100, 6/12/24 h budgets.",
        ntng="Presets `smoke` and `mini` shrink both models (fewer, narrower blocks, smaller batches) and budgets, "
             "with RST tables measured on a 2-core CPU in bf16; preset `paper` keeps the paper's sizes and tables.",
        why="The study has to run where there is no GPU.",
        effect="Methods whose benefit depends on scale (e.g. layer dropping on deep stacks) may look different; "
               "the budget fractions of every schedule are the paper's."),
    Departure(
        what="BERT downstream head",
        paper="Crammed BERT's classification head averages the final hidden states, then dense (1024) + tanh.",
        ntng="A pooled head on [CLS]: dense (hidden) + tanh, dropout, linear, for every pre-trained BERT alike.",
        why="Kept from ntng's first fine-tuning pipeline; the head is the same for every method.",
        effect="Absolute downstream scores differ; differences between methods are measured with one head."),
)


def forward_train_ratios(presets=("paper", "smoke", "mini")) -> dict[tuple[str, str], float]:
    """Full-depth forward seconds / forward+backward seconds in each shipped table, by (preset, model)."""
    from ntng.presets import PRESETS
    from ntng.training.rst import shipped_table

    out = {}
    for preset in presets:
        for model in ("bert", "t5"):
            table = shipped_table(preset, model)
            depth = PRESETS[preset].shape(model).num_layers
            out[(preset, model)] = table.forward_seconds(depth) / table.train_seconds(depth)
    return out


def departures() -> list[Departure]:
    """DEPARTURES with the figures they quote filled in from the shipped tables."""
    ratios = forward_train_ratios()
    cpu = ", ".join(f"{ratios[(p, m)]:.2f} ({p} {m.upper()})" for p in ("smoke", "mini") for m in ("bert", "t5"))
    figures = {"paper_bert": f"{ratios[('paper', 'bert')]:.2f}", "cpu": cpu}
    return [Departure(**{k: v.format(**figures) for k, v in d.__dict__.items()}) for d in DEPARTURES]


def departures_markdown() -> str:
    """The book page's body: one bold-titled block per departure (headings in a cell's output would not join the
    page's table of contents)."""
    blocks = []
    for d in departures():
        blocks.append(f"**{d.what}**\n\n- **The paper:** {d.paper}\n- **ntng:** {d.ntng}\n- **Why:** {d.why}\n"
                      f"- **Expected effect:** {d.effect}")
    return "\n\n".join(blocks)
