"""Shipped token-length datasets: the files hold exactly what their source published, and an
experiment draws from them by name (jointly with `lengths:`, one column with `dist: dataset`)."""
from __future__ import annotations

import configparser
import fnmatch
import gzip
import hashlib
import os

import numpy as np
import pytest

from simulator.errors import ConfigError
from simulator.lengths import DATA_DIR, DATASETS, load_pairs
from simulator.workload import parse_length, parse_workload

ROOT = os.path.join(os.path.dirname(__file__), "..")
# (rows, sum of prompt tokens, sum of output tokens, min and max of each), computed from the
# source CSVs (AzurePublicDataset data/AzureLLMInferenceTrace_{conv,code}.csv) with pandas
KNOWN = {"azure-conv-2023": (19_366, 22_361_870, 4_088_665, (2, 14_050), (7, 1_000)),
         "azure-code-2023": (8_819, 18_059_974, 245_896, (3, 7_437), (6, 1_899))}


@pytest.mark.parametrize("name", list(KNOWN))
def test_shipped_file_matches_its_source(name):
    ds = DATASETS[name]
    with gzip.open(ds.path, "rb") as fh:
        text = fh.read()
    assert hashlib.sha256(text).hexdigest() == ds.sha256
    header = [ln for ln in text.decode().splitlines() if ln.startswith("#")]
    assert any("github.com/Azure/AzurePublicDataset/blob/" in ln for ln in header)
    assert any("CC BY 4.0" in ln for ln in header) and any("derive.py" in ln for ln in header)
    pairs = load_pairs(name)
    rows, p_sum, o_sum, p_range, o_range = KNOWN[name]
    assert pairs.shape == (rows, 2) == (ds.rows, 2)
    assert tuple(pairs.sum(axis=0)) == (p_sum, o_sum)
    assert (pairs[:, 0].min(), pairs[:, 0].max()) == p_range
    assert (pairs[:, 1].min(), pairs[:, 1].max()) == o_range


def test_every_data_file_is_registered_and_packaged():
    files = sorted(f for f in os.listdir(DATA_DIR) if f.endswith(".csv.gz"))
    assert files == sorted(d.file for d in DATASETS.values())
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    globs = [g.strip() for g in cfg["options.package_data"]["simulator"].split(",")]
    for f in files + ["README.md"]:
        assert any(fnmatch.fnmatch(f"data/{f}", g) for g in globs), f


def test_a_changed_file_is_refused(tmp_path, monkeypatch):
    import simulator.lengths as lengths
    bad = tmp_path / "azure-conv-2023.csv.gz"
    bad.write_bytes(gzip.compress(b"prompt_tokens,output_tokens\n1,1\n"))
    monkeypatch.setattr(lengths, "DATA_DIR", str(tmp_path))
    lengths.load_pairs.cache_clear()
    try:
        with pytest.raises(ConfigError, match="SHA-256"):
            lengths.load_pairs("azure-conv-2023")
    finally:
        lengths.load_pairs.cache_clear()


def wl(**kw):
    base = {"requests": 2000, "arrival": {"kind": "all_at_once"}}
    base.update(kw)
    return parse_workload(base, "w.yaml")


def test_lengths_draw_whole_rows_seeded():
    w = wl(lengths={"dataset": "azure-conv-2023"})
    reqs = w.generate(np.random.default_rng(5))
    assert reqs == w.generate(np.random.default_rng(5))
    rows = set(map(tuple, load_pairs("azure-conv-2023").tolist()))
    assert all((r.prompt_tokens, r.output_tokens) in rows for r in reqs)
    drawn = np.array([(r.prompt_tokens, r.output_tokens) for r in reqs], dtype=float)
    whole = load_pairs("azure-conv-2023").astype(float)
    assert drawn.mean(axis=0) == pytest.approx(whole.mean(axis=0), rel=0.05)
    # the pairs keep the trace's (weak, negative) correlation
    assert np.corrcoef(drawn.T)[0, 1] == pytest.approx(np.corrcoef(whole.T)[0, 1], abs=0.05)


def test_lengths_clip():
    reqs = wl(lengths={"dataset": "azure-code-2023", "max_prompt_tokens": 1000,
                       "max_output_tokens": 8}).generate(np.random.default_rng(0))
    p = np.array([r.prompt_tokens for r in reqs])
    o = np.array([r.output_tokens for r in reqs])
    assert p.max() == 1000 and p.min() >= 3 and o.max() == 8 and o.min() >= 6


def test_dist_dataset_resamples_the_column_the_key_names():
    p = parse_length({"dist": "dataset", "name": "azure-code-2023"}, "w.yaml", "workload.prompt_tokens")
    o = parse_length({"dist": "dataset", "name": "azure-code-2023", "high": 50}, "w.yaml",
                     "workload.output_tokens")
    x, y = p.draw(np.random.default_rng(0), 3000), o.draw(np.random.default_rng(0), 3000)
    assert set(x) <= set(load_pairs("azure-code-2023")[:, 0].tolist())
    assert np.median(x) == pytest.approx(1469, rel=0.1) and y.max() == 50 and np.median(y) == 13


@pytest.mark.parametrize("change,key,words", [
    ({"lengths": {"dataset": "sharegpt"}}, "workload.lengths.dataset",
     "available: azure-conv-2023, azure-code-2023"),
    ({"lengths": {}}, "workload.lengths.dataset", "required"),
    ({"lengths": {"dataset": "azure-conv-2023", "max_tokens": 9}}, "workload.lengths.max_tokens",
     "max_output_tokens, max_prompt_tokens"),
    ({"lengths": {"dataset": "azure-conv-2023", "max_prompt_tokens": 0}},
     "workload.lengths.max_prompt_tokens", ">= 1"),
    ({"lengths": {"dataset": "azure-conv-2023"}, "prompt_tokens": 64}, "workload.prompt_tokens",
     "cannot be given with lengths"),
    ({"lengths": {"dataset": "azure-conv-2023", "max_output_tokens": 2.5}},
     "workload.lengths.max_output_tokens", "expected an integer"),
    ({"lengths": {"dataset": "azure-conv-2023", "max_output_tokens": 10**8}},
     "workload.lengths.max_output_tokens", "<= 10000000"),
    ({"lengths": "azure-conv-2023"}, "workload.lengths", "expected a mapping"),
    ({"prompt_tokens": {"dist": "dataset", "name": "azure"}}, "workload.prompt_tokens.name",
     "available: azure-conv-2023"),
    ({"prompt_tokens": {"dist": "dataset"}}, "workload.prompt_tokens.name", "required"),
])
def test_bad_dataset_use(change, key, words):
    with pytest.raises(ConfigError) as exc:
        wl(**change)
    assert exc.value.key == key and words in exc.value.message, exc.value.line()


def test_trace_replay_refuses_lengths(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("arrival_s,prompt_tokens,output_tokens\n0,5,1\n")
    with pytest.raises(ConfigError) as exc:
        parse_workload({"arrival": {"kind": "trace", "csv": str(p)},
                        "lengths": {"dataset": "azure-conv-2023"}}, "w.yaml")
    assert exc.value.key == "workload.lengths"
