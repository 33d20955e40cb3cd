"""Token-length datasets shipped with parasim: the prompt and output token counts of every request
of a published LLM serving trace, usable from an experiment by name.

Two ways to use one (`simulator.workload` parses both):

- ``workload.lengths: {dataset: NAME}`` draws (prompt, output) pairs together, so the two keep
  the trace's joint distribution (their correlation); optional ``max_prompt_tokens`` and
  ``max_output_tokens`` clip a drawn count to at most that many (a CI-sized run);
- ``prompt_tokens: {dist: dataset, name: NAME}`` (or ``output_tokens:``) resamples one column
  alone (the column the key names), clipped and rounded like every other distribution
  (``low``, ``high``, ``multiple_of``).

Each draw picks rows uniformly with replacement with the experiment's seeded generator. The files
live in ``simulator/data/`` (package data); their provenance, licence and derivation are in
``simulator/data/README.md`` and in each file's ``#`` header, and `DATASETS` pins the SHA-256 of
each file's uncompressed text, checked on every load.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .errors import ConfigError

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
COLUMNS = ("prompt_tokens", "output_tokens")
AZURE_SOURCE = "https://github.com/Azure/AzurePublicDataset"
AZURE_COMMIT = "b469a113cedca53ddc3bdea71a143dc4b7d8700c"
CC_BY_4 = "CC BY 4.0 (Microsoft Corporation, Azure LLM inference trace 2023)"


@dataclass(frozen=True)
class LengthDataset:
    """One shipped dataset: its file in `DATA_DIR`, where it comes from, and what it must hold
    (`rows` and the SHA-256 of the uncompressed text)."""
    name: str
    file: str
    description: str
    source: str
    licence: str
    rows: int
    sha256: str

    @property
    def path(self) -> str:
        return os.path.join(DATA_DIR, self.file)


DATASETS = {d.name: d for d in (
    LengthDataset("azure-conv-2023", "azure-conv-2023.csv.gz",
                  "Azure LLM inference trace 2023, conversation service (Splitwise, ISCA 2024)",
                  f"{AZURE_SOURCE}/blob/{AZURE_COMMIT}/data/AzureLLMInferenceTrace_conv.csv",
                  CC_BY_4, 19_366,
                  "0c735351c0cad9da25ac6e2a26209eaf0e970a89ed1c73a9452fe52a0a1a3dd6"),
    LengthDataset("azure-code-2023", "azure-code-2023.csv.gz",
                  "Azure LLM inference trace 2023, code service (Splitwise, ISCA 2024)",
                  f"{AZURE_SOURCE}/blob/{AZURE_COMMIT}/data/AzureLLMInferenceTrace_code.csv",
                  CC_BY_4, 8_819,
                  "a4442baaf71a7e95f839053082a424f3903f86af62c18b0132a8091b88577154"),
)}


def dataset(name, where: str, key: str) -> LengthDataset:
    """The dataset called `name`; a ConfigError at `key` listing the shipped ones otherwise."""
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(where, key, f"unknown length dataset {name!r}; available: "
                          + ", ".join(DATASETS))
    return DATASETS[name]


@lru_cache(maxsize=None)
def load_pairs(name: str) -> np.ndarray:
    """The dataset's (prompt_tokens, output_tokens) rows as an int64 array of shape (rows, 2), in
    the file's order; read once per process. A file that is missing or does not match its pinned
    checksum is a ConfigError (a broken installation, not bad input)."""
    ds = DATASETS[name]
    where = ds.path
    try:
        with gzip.open(ds.path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(where, "", f"cannot read length dataset {name}: {exc}; reinstall "
                          "parasim") from None
    if hashlib.sha256(raw).hexdigest() != ds.sha256:
        raise ConfigError(where, "", f"length dataset {name} does not match its pinned SHA-256; "
                          "reinstall parasim or rebuild it with simulator/data/derive.py")
    lines = [ln for ln in raw.decode("utf-8").splitlines() if not ln.startswith("#")]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = next(reader)
    if tuple(header) != COLUMNS:
        raise ConfigError(where, "", f"expected columns {', '.join(COLUMNS)}, got {header}")
    pairs = np.array([[int(p), int(o)] for p, o in reader], dtype=np.int64)
    if len(pairs) != ds.rows:
        raise ConfigError(where, "", f"expected {ds.rows} rows, got {len(pairs)}")
    pairs.setflags(write=False)
    return pairs


def column(name: str, which: str) -> np.ndarray:
    """One column of the dataset: `which` is prompt_tokens or output_tokens."""
    return load_pairs(name)[:, COLUMNS.index(which)]


@dataclass(frozen=True)
class LengthPairs:
    """``workload.lengths``: (prompt, output) pairs drawn together from a dataset, each count
    clipped to at most `max_prompt` / `max_output` tokens."""
    dataset: str
    max_prompt: int
    max_output: int

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = load_pairs(self.dataset)
        rows = pairs[rng.integers(0, len(pairs), size=n)]
        return np.minimum(rows[:, 0], self.max_prompt), np.minimum(rows[:, 1], self.max_output)
