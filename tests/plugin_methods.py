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
