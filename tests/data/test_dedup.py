"""Dedup on real web text: planted near-duplicates (edited copies) are found with
precision and recall >= 0.95; exact and line-level (boilerplate) dedup."""

import json
import random

from conftest import FIXTURES, process_config, read_jsonl

from puyu_jax.data.process import dropped_records, read_docs, run_process


def edited_copy(text: str, rng: random.Random, rate: float = 0.02) -> str:
    """A near-duplicate: ~`rate` of the words replaced or deleted, a sentence appended."""
    words = text.split(" ")
    for _ in range(max(1, int(len(words) * rate))):
        i = rng.randrange(len(words))
        if rng.random() < 0.5:
            words[i] = rng.choice(["great", "really", "new", "the", "our", "best"])
        else:
            del words[i]
    return " ".join(words) + " Thanks for reading."


def test_planted_near_duplicates_precision_recall(tmp_path):
    docs = read_jsonl(FIXTURES / "c4_sample.jsonl")
    rng = random.Random(0)
    originals = [d for d in docs if len(d["text"].split()) >= 40]
    planted = {}
    rows = [{"id": f"orig-{i}", "text": d["text"]} for i, d in enumerate(originals)]
    for i in rng.sample(range(len(originals)), 60):
        cid = f"copy-{i}"
        planted[cid] = f"orig-{i}"
        rows.append({"id": cid, "text": edited_copy(originals[i]["text"], rng)})
    src = tmp_path / "dups.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = process_config(tmp_path / "o", [src], stages=[], dedup={"threshold": 0.7, "bands": 16, "rows": 8, "ngram": 5})
    run_process(cfg)
    found = {r["id"]: r["dup_of"] for r in dropped_records(tmp_path / "o") if r["reason"] == "near_duplicate"}
    true_pos = sum(1 for cid, orig in found.items() if planted.get(cid) == orig)
    recall = true_pos / len(planted)
    precision = true_pos / max(len(found), 1)
    assert recall >= 0.95 and precision >= 0.95, (recall, precision, len(found))
    kept = {d["id"] for d in read_docs(tmp_path / "o")}
    assert all(f"orig-{i}" in kept for i in range(len(originals)))


def test_exact_dedup_ignores_case_and_punctuation(tmp_path):
    t = read_jsonl(FIXTURES / "c4_sample.jsonl")[1]["text"]
    src = tmp_path / "x.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": s}) + "\n"
                           for i, s in enumerate([t, t.upper(), t.replace(".", " . ") + "!!"])))
    r = run_process(process_config(tmp_path / "o", [src], stages=[], dedup={"near": False}))
    assert r["kept"] == 1 and r["stages"]["dedup"]["reasons"] == {"exact_duplicate": 2}


def test_line_dedup_removes_boilerplate_across_documents(tmp_path):
    docs = read_jsonl(FIXTURES / "c4_sample.jsonl")[:10]
    footer = "Copyright 2019 Example Corp. All rights reserved. Privacy policy and cookie settings."
    src = tmp_path / "b.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": d["text"] + "\n" + footer}) + "\n" for i, d in enumerate(docs)))
    r = run_process(process_config(tmp_path / "o", [src], stages=[], dedup={"line_min_docs": 3}))
    kept = list(read_docs(tmp_path / "o"))
    assert len(kept) == 10 and all(footer not in d["text"] for d in kept)
    assert r["line_dedup"]["lines_removed"] == 10
