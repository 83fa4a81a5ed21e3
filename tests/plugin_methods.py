"""Methods defined outside ntng, as a user's own package would define them (tests of the open registry)."""

from __future__ import annotations

from ntng.methods.base import Method, Run


def embedding_parameters(model) -> list:
    """The input embeddings of either model (BERT's word table, T5's shared one)."""
    return [model.embeddings.word.weight] if model.model_name == "bert" else [model.hf.shared.weight]


class FreezeEmbeddings(Method):
    """Keep the input embeddings out of the update for the first `fraction` of the budget."""

    name = "freeze_embeddings"
    label = "frozen embeddings"
    family = "warm_start"  # a family the book does not know: "Other methods"
    component, action = "model", "restrict"
    summary = "no update to the input embeddings early in the budget"
    card = "Freezes the input embeddings for the first 20% of the RST budget."

    def __init__(self, model, preset, fraction: float = 0.2):
        super().__init__(model, preset)
        self.fraction = float(fraction)
        self.frozen_steps = 0

    def settings(self) -> dict:
        return {"fraction": self.fraction}

    def before_update(self, run: Run) -> None:
        if run.clock.budget_fraction < self.fraction:
            for parameter in embedding_parameters(run.model):
                parameter.grad = None
            self.frozen_steps += 1

    def stats(self) -> dict:
        return {"frozen_steps": self.frozen_steps}


class ExtraForward(Method):
    """One extra scoring pass per step, through the run's helper: the clock must charge it."""

    name = "extra_forward"
    extra_work = ("scoring",)

    def begin_step(self, run: Run) -> None:
        run.forward(run.batches.next(), kind="scoring")


class NotAMethod:
    name = "not_a_method"


class Nameless(Method):
    pass


class BadHook(Method):
    name = "bad_hook"

    def begin_step(self):  # the loop calls begin_step(run)
        pass


class UnknownExtraWork(Method):
    name = "unknown_extra_work"
    extra_work = ("gossip",)  # not a kind of work the clock charges


class Impostor(Method):
    name = "lion"


class PlainSGD(Method):
    """An optimizer no RST table prices: its step is charged an estimate (ntng.training.pricing)."""

    name = "plain_sgd"
    family = "optimizers"

    @property
    def rst_optimizer(self) -> str:
        return "plain_sgd"

    def build_optimizer(self, model):
        import torch

        return torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)


# --- a new built-in method, written as one module: what `ntng/methods/<name>.py` would hold -----------------------
# Joining the study takes this class and one line in the registry (`ntng.methods.BUILTINS`); nothing else in the
# package names it (tests/test_registry.py::test_a_built_in_method_is_its_module_and_one_registry_line).

TOY_DEFAULTS = {"bert": {"scale": 0.5}, "t5": {"scale": 0.25}}  # its own defaults, per model


def scale_peak(peak: float, scale: float) -> float:
    """The functional core: the peak learning rate the method trains at."""
    return peak * scale


class ScaledPeak(Method):
    """The baseline at a fraction of its peak, with one scoring pass per step (so it has an ablation)."""

    name = "scaled_peak"
    label = "scaled peak"
    family = "toy"
    component, action = "optimization", "restrict"
    summary = "the baseline at a fraction of its peak"
    card = "Trains the baseline at `scale` times its peak learning rate."
    extra_work = ("scoring",)
    studied_on = ("bert",)

    def __init__(self, model, preset, **options):
        from ntng.errors import UsageError
        from ntng.methods.base import take_options

        super().__init__(model, preset)
        self.options = take_options(self.name, options, TOY_DEFAULTS[model])
        if not 0.0 < self.options["scale"] <= 1.0:  # its own valid range
            raise UsageError(f"method {self.name}: scale must be in (0, 1], got {self.options['scale']}")

    def settings(self) -> dict:
        return dict(self.options)

    def tuning(self) -> dict:
        from ntng.methods.base import around

        return {"scale": around(self.options["scale"])}

    def build_optimizer(self, model):
        from ntng.training.optim import build_optimizer

        r = self.recipe
        return build_optimizer(r.optimizer, model, scale_peak(r.lr, self.options["scale"]), r.betas, r.eps,
                               r.weight_decay)

    def begin_step(self, run: Run) -> None:
        run.forward(run.batches.next(), kind="scoring")
