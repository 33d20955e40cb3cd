"""Rebuild the shipped token-length datasets from their published source files.

    python simulator/data/derive.py PATH/TO/AzurePublicDataset

reads ``data/AzureLLMInferenceTrace_conv.csv`` and ``_code.csv`` of a checkout of
https://github.com/Azure/AzurePublicDataset and writes ``azure-conv-2023.csv.gz`` and
``azure-code-2023.csv.gz`` next to this script: every row of the source, in the source's order,
with ``ContextTokens`` as ``prompt_tokens`` and ``GeneratedTokens`` as ``output_tokens``; the
``TIMESTAMP`` column is dropped. Nothing is filtered, rounded or resampled. The files are gzipped
with a fixed header (mtime 0, no file name), so the same source gives the same bytes; their
SHA-256 is pinned in `simulator.lengths.DATASETS`.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import os
import sys

SOURCE_REPO = "https://github.com/Azure/AzurePublicDataset"
SOURCE_COMMIT = "b469a113cedca53ddc3bdea71a143dc4b7d8700c"   # master on 2025-10-20; the two CSVs
SOURCE_FILES_COMMIT = "790921015d50dd6aae7f7e47f39ba0e235ad6b08"   # last changed here, 2024-03-24
FILES = {"azure-conv-2023": "AzureLLMInferenceTrace_conv.csv",
         "azure-code-2023": "AzureLLMInferenceTrace_code.csv"}


def derive(source_path: str, name: str) -> bytes:
    raw = open(source_path, "rb").read()
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"))))
    out = io.StringIO()
    base = os.path.basename(source_path)
    for line in (
            f"{name}: prompt and output token counts of every request in {base}",
            f"source: {SOURCE_REPO}/blob/{SOURCE_COMMIT}/data/{base}",
            f"source sha256: {hashlib.sha256(raw).hexdigest()}",
            "licence: CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), Microsoft "
            "Corporation, Azure LLM inference trace 2023",
            "cite: Patel et al., Splitwise: Efficient generative LLM inference using phase "
            "splitting, ISCA 2024",
            "changes: TIMESTAMP dropped; ContextTokens -> prompt_tokens, GeneratedTokens -> "
            "output_tokens; rows kept in source order, none removed (simulator/data/derive.py)"):
        out.write(f"# {line}\n")
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["prompt_tokens", "output_tokens"])
    for r in rows:
        w.writerow([int(r["ContextTokens"]), int(r["GeneratedTokens"])])
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, compresslevel=9, mtime=0) as gz:
        gz.write(out.getvalue().encode("utf-8"))
    return buf.getvalue()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    here = os.path.dirname(os.path.abspath(__file__))
    for name, base in FILES.items():
        data = derive(os.path.join(argv[0], "data", base), name)
        with open(os.path.join(here, f"{name}.csv.gz"), "wb") as fh:
            fh.write(data)
        print(f"{name}.csv.gz: {len(data)} bytes, sha256 {hashlib.sha256(data).hexdigest()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
