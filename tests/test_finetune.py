"""Fine-tuning (ntng.experiments.downstream) on the fixture tasks, with tiny pre-training runs; metrics on hand-computed cases."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ntng import cli
from ntng.errors import UsageError
from ntng.experiments import downstream, metrics
from ntng.presets import get_preset
from ntng.training import loop as train

RECIPE = {"epochs": 2, "batch_size": 8}  # the fixture tasks hold a few dozen examples each


@pytest.fixture(scope="module")
def runs(built_fixture, tmp_path_factory):
    """A tiny complete pre-training run per model (2 s of RST)."""
    data_dir, _ = built_fixture
    root = tmp_path_factory.mktemp("runs")
    for model in ("bert", "t5"):
        summary = train.pretrain(model=model, budget="2s", preset="tiny", out_dir=root / model, data_dir=data_dir,
                                 log=lambda m: None)
        assert summary["status"] == "complete"
    return root, data_dir


def copy_run(runs, model: str, dest: Path) -> Path:
    """A pre-training run without its fine-tuning results (tests fine-tune copies, not the shared runs)."""
    shutil.copytree(runs[0] / model, dest, ignore=shutil.ignore_patterns("finetune"))
    return dest


# --- metrics against hand-computed values ---------------------------------------------------------------

def test_metrics_agree_with_hand_computed_values():
    pred, gold = [1, 1, 0, 0, 1, 0], [1, 0, 0, 0, 1, 1]
    # TP 2, TN 2, FP 1, FN 1
    assert metrics.accuracy(pred, gold) == pytest.approx(4 / 6)
    assert metrics.binary_f1(pred, gold) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert metrics.matthews_corr(pred, gold) == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))
    # class 0: TP 2, FP 1, FN 1 -> 2/3; class 1 likewise -> macro 2/3
    assert metrics.macro_f1(pred, gold) == pytest.approx(2 / 3)

    # three classes: per-class F1 0: 2*1/(2+1+0)=2/3, 1: 2*1/(2+0+1)=2/3, 2: 1 -> macro 7/9
    pred3, gold3 = [0, 0, 1, 2], [0, 1, 1, 2]
    assert metrics.macro_f1(pred3, gold3) == pytest.approx(7 / 9)
    # Gorodkin's MCC: c = 3, s = 4, p = (2, 1, 1), t = (1, 2, 1): (12 - 5) / sqrt((16 - 6)(16 - 6)) = 0.7
    assert metrics.matthews_corr(pred3, gold3) == pytest.approx(0.7)

    assert metrics.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert metrics.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # deviations (-4/3, -1/3, 5/3) and (-1, 1, 0): sum xy = 1, sum x^2 = 14/3, sum y^2 = 2
    assert metrics.pearson([1.0, 2.0, 4.0], [1.0, 3.0, 2.0]) == pytest.approx(1 / math.sqrt(14 / 3 * 2))
    # a constant prediction carries no information: the chance-corrected metrics give it 0
    assert metrics.matthews_corr([0, 0, 0, 0], [0, 1, 0, 1]) == 0.0
    assert metrics.pearson([2, 2, 2], [1, 2, 3]) == 0.0
    assert metrics.accuracy([0, 0, 0, 0], [0, 0, 0, 1]) == 0.75
    with pytest.raises(ValueError):
        metrics.accuracy([0, 1], [0])


def test_warmup_then_linear_decay_schedule():
    assert downstream.warmup_linear_decay(0.0, 0.1) == 0.0
    assert downstream.warmup_linear_decay(0.05, 0.1) == pytest.approx(0.5)
    assert downstream.warmup_linear_decay(0.1, 0.1) == pytest.approx(1.0)
    assert downstream.warmup_linear_decay(0.55, 0.1) == pytest.approx(0.5)
    assert downstream.warmup_linear_decay(1.0, 0.1) == 0.0
    assert downstream.warmup_linear_decay(0.25, 0.0) == pytest.approx(0.75)


# --- the pre-trained model --------------------------------------------------------------------------------

def test_the_checkpoint_is_loaded_at_the_depth_it_ended_with(runs):
    from ntng.models.pretraining import build_model
    from ntng.presets import get_preset

    for depth in (1, 3):  # layer stacking / dropping leave the state with this many blocks
        for model in ("bert", "t5"):
            state = build_model(model, get_preset("tiny"), num_layers=depth).state_dict()
            assert downstream.checkpoint_depth(state, model) == depth
    run = downstream.inspect_run(runs[0] / "bert")
    model = downstream.load_pretrained(run)
    saved = torch.load(runs[0] / "bert" / "checkpoint.pt", weights_only=False)["model"]
    assert model.num_layers == 4
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())


def test_t5_rank_scores_are_sequence_log_likelihoods(runs):
    """Against the pre-training forward's loss (itself checked against Hugging Face's in test_models): the summed
    log-likelihood of a target is -(mean token loss) x length."""
    model = downstream.load_pretrained(downstream.inspect_run(runs[0] / "t5")).eval()
    torch.manual_seed(0)
    inputs = torch.randint(3, 300, (2, 9))
    target = torch.randint(3, 300, (2, 4))
    with torch.no_grad():
        ours = downstream.t5_target_logprobs(model, model.encode(inputs, list(range(model.num_layers))), None,
                                             target, torch.ones_like(target))
        for row in range(2):
            loss = model({"input_ids": inputs[row:row + 1], "labels": target[row:row + 1]})["loss"]
            assert ours[row].item() == pytest.approx(-loss.item() * 4, rel=1e-4)


def test_t5_predicts_the_label_with_the_highest_log_likelihood(runs):
    """All labels are scored in one padded decoder pass; each must score as it does alone, unpadded."""
    model = downstream.load_pretrained(downstream.inspect_run(runs[0] / "t5")).eval()
    torch.manual_seed(1)
    labels = [[5, 1], [17, 42, 9, 1], [300, 1], [8, 8, 1]]  # different lengths: the padding must not count
    inputs = [torch.randint(3, 300, (n,)).tolist() for n in (7, 12, 5, 9, 11)]
    encoded = downstream.Encoded(train_inputs=[], train_targets=[], dev_inputs=inputs, dev_gold=[],
                                 num_classes=len(labels), class_ids=labels, class_values=None, fingerprint="")
    recipe = downstream.recipe_for_suite(get_preset("tiny").finetune, downstream.OFFLINE_SUITE)
    fitter = downstream._Fitter("t5", model, encoded, recipe, "accuracy", 0, torch.device("cpu"), None,
                                lambda m: None, "test")
    expected = []
    with torch.no_grad():
        for example in inputs:
            ids = torch.tensor([example])
            states = model.encode(ids, list(range(model.num_layers)))
            alone = [downstream.t5_target_logprobs(model, states, None, torch.tensor([label]),
                                                   torch.ones(1, len(label))).item() for label in labels]
            expected.append(max(range(len(labels)), key=alone.__getitem__))
    assert fitter.predict(inputs) == expected
    assert len(set(expected)) > 1  # a case where the choice depends on the input


# --- fine-tuning ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["bert", "t5"])
def test_finetune_each_offline_task_writes_its_json(runs, tmp_path, model):
    run_dir = copy_run(runs, model, tmp_path / "run")
    logs = []
    results = downstream.finetune(run_dir, recipe=RECIPE, floor_dir=tmp_path / "floors", log=logs.append)
    assert sorted(results) == ["brown_genre", "sotu_party", "spam_ham"]
    expected_metric = {"spam_ham": "mcc", "brown_genre": "macro_f1", "sotu_party": "accuracy"}
    for task, result in results.items():
        on_disk = json.loads((run_dir / "finetune" / f"{task}.json").read_text())
        assert on_disk == json.loads(json.dumps(result))
        assert on_disk["task"] == task and on_disk["metric"] == expected_metric[task]
        assert on_disk["suite"] == "offline stand-in for GLUE"
        assert on_disk["model"] == model and on_disk["method"] == "baseline" and on_disk["preset"] == "tiny"
        assert on_disk["num_layers"] == 4 and on_disk["counts_toward_rst_budget"] is False
        assert on_disk["recipe"]["epochs"] == 2 and on_disk["recipe"]["batch_size"] == 8
        for part in (on_disk, on_disk["floor"]):
            assert [e["epoch"] for e in part["epochs"]] == [1, 2]
            assert all(math.isfinite(e["train_loss"]) and -1 <= e["dev_score"] <= 1 for e in part["epochs"])
            best = max(part["epochs"], key=lambda e: e["dev_score"])
            assert part["best_dev_score"] == best["dev_score"] and part["best_epoch"] == best["epoch"]
        assert on_disk["wall_s"] > 0 and on_disk["floor_wall_s"] > 0
        assert on_disk["n_train"] > 10 and on_disk["n_dev"] > 2
    assert not list((run_dir / "finetune").glob(".*tmp*"))

    # a second call finds everything up to date and rewrites nothing
    stamps = {p: p.stat().st_mtime_ns for p in (run_dir / "finetune").iterdir()}
    logs.clear()
    downstream.finetune(run_dir, recipe=RECIPE, floor_dir=tmp_path / "floors", log=logs.append)
    assert sum("up to date" in line for line in logs) == 3 and len(logs) == 3
    assert stamps == {p: p.stat().st_mtime_ns for p in (run_dir / "finetune").iterdir()}

    # another run of the same architecture and seed reuses the cached floors, which are what it would compute
    other = copy_run(runs, model, tmp_path / "other")
    logs.clear()
    again = downstream.finetune(other, tasks=["sotu_party"], recipe=RECIPE, floor_dir=tmp_path / "floors",
                                log=logs.append)
    assert any("floor: cached" in line for line in logs)
    assert again["sotu_party"]["floor"] == results["sotu_party"]["floor"]
    assert again["sotu_party"]["epochs"] == results["sotu_party"]["epochs"]  # same seed, same numbers


def test_a_changed_recipe_is_not_up_to_date(runs, tmp_path):
    run_dir = copy_run(runs, "bert", tmp_path / "run")
    one = downstream.finetune(run_dir, tasks=["spam_ham"], recipe={"epochs": 1, "batch_size": 8},
                              floor_dir=tmp_path / "floors", log=lambda m: None)
    two = downstream.finetune(run_dir, tasks=["spam_ham"], recipe={"epochs": 2, "batch_size": 8},
                              floor_dir=tmp_path / "floors", log=lambda m: None)
    assert len(one["spam_ham"]["epochs"]) == 1 and len(two["spam_ham"]["epochs"]) == 2
    assert len(list((tmp_path / "floors").iterdir())) == 2


def test_the_preset_recipes_follow_the_paper_and_scale():
    from ntng.presets import get_preset

    paper = get_preset("paper").finetune
    assert (paper.lr, paper.batch_size, paper.epochs, paper.max_train) == (4e-5, 16, 5, None)
    superglue = downstream.recipe_for_suite(paper, "superglue")
    assert superglue.lr == pytest.approx(5e-5) and superglue.epochs == 10
    assert downstream.recipe_for_suite(paper, "glue") == paper
    smoke, mini = get_preset("smoke").finetune, get_preset("mini").finetune
    assert smoke.max_train < mini.max_train and smoke.max_len <= get_preset("smoke").bert.seq_len
    assert downstream.capped_indices(10, None) == list(range(10))
    assert downstream.capped_indices(10, 4) == downstream.capped_indices(10, 4) and len(downstream.capped_indices(10, 4)) == 4


# --- refusals ---------------------------------------------------------------------------------------------

def test_bad_input_is_refused_before_anything_is_written(runs, tmp_path):
    run_dir = copy_run(runs, "bert", tmp_path / "run")
    with pytest.raises(UsageError, match="unknown task 'glue_cola'"):
        downstream.finetune(run_dir, tasks=["spam_ham", "glue_cola"])
    with pytest.raises(UsageError, match="no run directory"):
        downstream.finetune(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="HF_DATASETS_OFFLINE=1"):
        downstream.finetune(run_dir, tasks=["cola"])
    with pytest.raises(UsageError, match="recipe"):
        downstream.finetune(run_dir, recipe={"max_len": 4096})
    summary = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "diverged"}))
    with pytest.raises(UsageError, match="not a complete run"):
        downstream.finetune(run_dir)
    assert not (run_dir / "finetune").exists()


def test_cli_unknown_task_is_one_line_and_exit_2(runs, tmp_path):
    run_dir = copy_run(runs, "bert", tmp_path / "run")
    proc = subprocess.run([sys.executable, "-m", "ntng.cli", "finetune", "--run", str(run_dir), "--task", "nope"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("ntng: error: unknown task 'nope'") and proc.stderr.count("\n") == 1
    assert not (run_dir / "finetune").exists()


def test_cli_finetunes_and_prints_a_table(runs, tmp_path, capsys, monkeypatch):
    run_dir = copy_run(runs, "t5", tmp_path / "run")
    monkeypatch.setattr(downstream, "finetune", _with_recipe(downstream.finetune, tmp_path / "floors"))
    assert cli.main(["finetune", "--run", str(run_dir), "--task", "sotu_party"]) == 0
    out = capsys.readouterr().out
    assert "sotu_party" in out and "offline stand-in for GLUE" in out and "not charged to the RST budget" in out
    assert (run_dir / "finetune" / "sotu_party.json").exists()


def _with_recipe(function, floor_dir):
    def call(*args, **kwargs):
        return function(*args, recipe=RECIPE, floor_dir=floor_dir, **kwargs)
    return call


def test_papermill_notebook_fine_tunes_and_plots(runs, tmp_path):
    run_dir = copy_run(runs, "bert", tmp_path / "run")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "finetune.ipynb"
    out = tmp_path / "executed.ipynb"
    proc = subprocess.run([sys.executable, "-m", "papermill", str(notebook), str(out), "-p", "run_dir", str(run_dir),
                           "-p", "tasks", "spam_ham", "--cwd", str(tmp_path), "--kernel", "python3"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((run_dir / "finetune" / "spam_ham.json").read_text())
    assert result["recipe"]["epochs"] == 2  # the preset's own recipe (tiny is built on smoke)
    executed = json.loads(out.read_text())
    assert any("image/png" in o.get("data", {}) for c in executed["cells"] for o in c.get("outputs", []))
