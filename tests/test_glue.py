"""GLUE/SuperGLUE loaders through `datasets`, with tiny local files laid out like the hub repositories."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from ntng.data import glue
from ntng.errors import RunError, UsageError
from ntng.experiments import downstream
from ntng.training import loop as train

ROWS = {  # (dataset, config, split) -> rows, in the hub's column names
    ("nyu-mll/glue", "cola", "train"): [{"sentence": f"the whale was {w} .", "label": k % 2, "idx": k}
                                        for k, w in enumerate(["big", "sea the", "old", "ship ship", "white",
                                                               "of of", "free", "and the"] * 3)],
    ("nyu-mll/glue", "cola", "validation"): [{"sentence": "the sea was old .", "label": 1, "idx": 0},
                                             {"sentence": "sea the of .", "label": 0, "idx": 1}],
    ("nyu-mll/glue", "cola", "test"): [{"sentence": "hidden", "label": -1, "idx": 0}],
    ("nyu-mll/glue", "mnli", "train"): [{"premise": "a ship", "hypothesis": "a boat", "label": k % 3, "idx": k}
                                        for k in range(6)],
    ("nyu-mll/glue", "mnli", "validation_matched"): [{"premise": "p m", "hypothesis": "h m", "label": 2, "idx": 0},
                                                     {"premise": "hidden", "hypothesis": "x", "label": -1, "idx": 1}],
    ("nyu-mll/glue", "mnli", "validation_mismatched"): [{"premise": "p mm", "hypothesis": "h mm", "label": 0,
                                                         "idx": 0}],
    ("nyu-mll/glue", "stsb", "train"): [{"sentence1": f"the {w} sea", "sentence2": f"a {w} ship",
                                         "label": float(k % 6), "idx": k}
                                        for k, w in enumerate(["old", "free", "white", "great", "cold", "dark"] * 3)],
    ("nyu-mll/glue", "stsb", "validation"): [{"sentence1": "the old sea", "sentence2": "a cold ship", "label": 3.8,
                                              "idx": 0},
                                             {"sentence1": "the sea", "sentence2": "the sea", "label": 5.0, "idx": 1},
                                             {"sentence1": "a whale", "sentence2": "the law", "label": 0.4, "idx": 2}],
    ("aps/super_glue", "wsc.fixed", "train"): [{"text": "The captain saw the whale and he ran.", "span1_text": "captain",
                                                "span2_text": "he", "label": 1, "idx": 0}],
    ("aps/super_glue", "wsc.fixed", "validation"): [{"text": "The sea hit the ship; it sank.", "span1_text": "ship",
                                                     "span2_text": "it", "label": 1, "idx": 0}],
}


def write_mirror(root):
    """<root>/<hub id>/ with parquet files and the README `configs:` header, as the hub repositories have."""
    import datasets

    configs: dict = {}
    for (dataset, config, split), rows in ROWS.items():
        folder = root / dataset / config
        folder.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(rows).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
        configs.setdefault(dataset, {}).setdefault(config, []).append(split)
    for dataset, entries in configs.items():
        lines = ["---", "configs:"]
        for config, splits in entries.items():
            lines += [f"- config_name: {config}", "  data_files:"]
            lines += [f"  - split: {s}\n    path: {config}/{s}-*" for s in splits]
        (root / dataset / "README.md").write_text("\n".join(lines + ["---", ""]))
    return root


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    return write_mirror(tmp_path_factory.mktemp("hub"))


def test_the_paper_task_list_and_metrics():
    assert set(glue.GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli-m", "mnli-mm", "qnli", "rte"}
    assert set(glue.SUPERGLUE_TASKS) == {"boolq", "cb", "copa", "multirc", "superglue-rte", "wic", "wsc"}
    metric = {n: t.metric for n, t in glue.BENCHMARK_TASKS.items()}
    assert metric["cola"] == "mcc" and metric["stsb"] == "pearson" and metric["mrpc"] == metric["qqp"] == "f1"
    assert metric["cb"] == "macro_f1" and metric["multirc"] == "f1" and metric["mnli-mm"] == "accuracy"
    assert glue.BENCHMARK_TASKS["stsb"].labels is None


def test_loaders_read_the_hub_layout(mirror):
    cola = glue.load_benchmark_task("cola", mirror)
    assert cola.suite == "glue" and cola.metric == "mcc" and cola.labels == ("unacceptable", "acceptable")
    assert len(cola.train_texts) == 24 and cola.train_texts[0] == ("the whale was big .",)
    assert cola.dev_texts == [("the sea was old .",), ("sea the of .",)] and cola.dev_labels == [1, 0]

    matched = glue.load_benchmark_task("mnli-m", mirror)
    mismatched = glue.load_benchmark_task("mnli-mm", mirror)
    assert matched.dev_texts == [("p m", "h m")] and matched.dev_labels == [2]  # the unlabelled row is left out
    assert mismatched.dev_texts == [("p mm", "h mm")] and mismatched.train_labels == matched.train_labels

    stsb = glue.load_benchmark_task("stsb", mirror)
    assert stsb.labels is None and stsb.dev_labels == [3.8, 5.0, 0.4]

    wsc = glue.load_benchmark_task("wsc", mirror)
    assert wsc.suite == "superglue" and wsc.dev_texts == [("The sea hit the ship; it sank.",
                                                          'Does "it" refer to "ship"?')]


def test_offline_without_a_mirror_is_refused_in_one_line(monkeypatch, tmp_path):
    monkeypatch.delenv(glue.MIRROR_ENV, raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UsageError) as info:
        glue.load_benchmark_task("rte")
    assert "HF_DATASETS_OFFLINE=1" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(UsageError, match="no nyu-mll/glue under"):
        glue.load_benchmark_task("rte", tmp_path)
    with pytest.raises(UsageError, match="unknown task 'record'"):
        glue.load_benchmark_task("record")


@pytest.fixture(scope="module")
def runs(built_fixture, tmp_path_factory):
    data_dir, _ = built_fixture
    root = tmp_path_factory.mktemp("glue-runs")
    for model in ("bert", "t5"):
        train.pretrain(model=model, budget="1s", preset="tiny", out_dir=root / model, data_dir=data_dir,
                       log=lambda m: None)
    return root


@pytest.mark.parametrize(("model", "task"), [("bert", "cola"), ("t5", "mnli-mm"), ("bert", "stsb")])
def test_finetune_a_glue_task_through_the_mirror(runs, mirror, tmp_path, monkeypatch, model, task):
    monkeypatch.setenv(glue.MIRROR_ENV, str(mirror))
    run_dir = tmp_path / "run"
    shutil.copytree(runs / model, run_dir)
    results = downstream.finetune(run_dir, tasks=[task], recipe={"epochs": 2, "batch_size": 8},
                                  floor_dir=tmp_path / "floors", log=lambda m: None)
    result = json.loads((run_dir / "finetune" / f"{task}.json").read_text())
    assert result == json.loads(json.dumps(results[task]))
    assert result["suite"] == "glue" and result["metric"] == glue.BENCHMARK_TASKS[task].metric
    assert result["n_train"] == len(glue.load_benchmark_task(task, mirror).train_texts)
    assert result["n_dev"] == {"cola": 2, "mnli-mm": 1, "stsb": 3}[task]
    assert len(result["epochs"]) == len(result["floor"]["epochs"]) == 2
    assert all(-1 <= e["dev_score"] <= 1 for e in result["epochs"] + result["floor"]["epochs"])
    assert result["source"]["dataset"] == "nyu-mll/glue"


def test_superglue_takes_the_papers_longer_recipe(runs, mirror, tmp_path, monkeypatch):
    monkeypatch.setenv(glue.MIRROR_ENV, str(mirror))
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "bert", run_dir)
    result = downstream.finetune(run_dir, tasks=["wsc"], recipe={"epochs": 1, "batch_size": 8, "lr": 4e-5},
                                 floor_dir=tmp_path / "floors", log=lambda m: None)["wsc"]
    assert result["suite"] == "superglue" and result["recipe"]["epochs"] == 2
    assert result["recipe"]["lr"] == pytest.approx(5e-5)


def test_stsb_for_t5_is_rank_classification_over_rounded_scores(runs):
    buckets = downstream.stsb_buckets()
    assert buckets[0] == 0.0 and buckets[-1] == 5.0 and len(buckets) == 26 and buckets[19] == 3.8
    # the fixture's 400-piece vocabulary has no digits, so the score words are stood in for by distinct ids here
    run = downstream.inspect_run(runs / "t5")
    encoded = downstream.Encoded(
        train_inputs=[[5 + k, 9, 1] for k in range(12)], train_targets=[k % 3 for k in range(12)],
        dev_inputs=[[5, 9, 1], [6, 9, 1], [7, 9, 1]], dev_gold=[0.0, 2.4, 5.0], num_classes=3,
        class_ids=[[20, 1], [21, 1], [22, 1]], class_values=[0.0, 2.4, 5.0], fingerprint="synthetic")
    fitter = downstream._Fitter("t5", downstream.load_pretrained(run), encoded,
                                run.preset.finetune, "pearson", 0, torch.device("cpu"), None, lambda m: None, "t")
    assert set(fitter.predict(encoded.dev_inputs)) <= {0.0, 2.4, 5.0}  # a predicted class is its score
    result = fitter.fit()
    assert len(result.epochs) == run.preset.finetune.epochs and -1 <= result.best_dev_score <= 1


def test_label_words_that_tokenize_alike_are_refused(built_fixture):
    from ntng.data import corpus as data

    tokenizer = data.load_tokenizer("t5", 400, built_fixture[0])
    task = glue.TaskData(name="stsb", suite="glue", metric="pearson", labels=None, train_texts=[("a", "b")],
                         train_labels=[1.0], dev_texts=[("a", "b")], dev_labels=[2.0])
    with pytest.raises(RunError, match="tokenize alike"):  # no digits in the fixture vocabulary
        downstream.encode_task(task, "t5", tokenizer, downstream.get_preset("tiny").finetune)
