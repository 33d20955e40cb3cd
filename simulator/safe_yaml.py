"""The one YAML reader for every YAML file parasim reads (experiments, hardware profiles).

It is `yaml.SafeLoader` (plain data only: no Python objects) with limits that make hostile or
mistaken input fail fast with a `ConfigError` naming the file and the key, instead of running out
of memory or recursion:

- the file must be UTF-8 text of at most `MAX_BYTES` bytes;
- mappings and lists nest at most `MAX_DEPTH` levels deep;
- anchors and aliases (``&x`` / ``*x``) are allowed, but the document with every alias expanded may
  hold at most `MAX_NODES` values (a "billion laughs" document is rejected while it is read), and
  an alias may not refer to a mapping or list that contains it (a cycle);
- a key may appear only once in a mapping (plain PyYAML keeps the last one silently). Merge keys
  (``<<: *defaults``) still work: keys written beside them override the merged ones.
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .errors import ConfigError

MAX_BYTES = 2 * 2**20         # 2 MiB: experiments and profiles are a few KiB; big data goes in CSVs
MAX_DEPTH = 50                # nesting levels of mappings and lists
MAX_NODES = 200_000           # values in the document once every alias is expanded
_MERGE_TAG = "tag:yaml.org,2002:merge"


class YamlLimitError(yaml.YAMLError):
    """A document that breaks one of the limits above; `key` is the dotted path where it did."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key
        self.message = message


class LimitedLoader(yaml.SafeLoader):
    """SafeLoader that counts expanded nodes, bounds nesting and refuses duplicate keys and cycles."""

    def __init__(self, stream):
        super().__init__(stream)
        self._path: list[str] = []
        self._open: set[str] = set()          # anchors of collections being composed (cycles)
        self._size: dict[int, int] = {}       # id(node) -> expanded node count
        self._height: dict[int, int] = {}     # id(node) -> expanded nesting height
        self._keys: dict[int, set] = {}       # id(mapping node) -> (tag, value) of its keys so far
        self._total = 0
        self._depth = -1                      # nesting level of the node being composed (root: 0)

    def _where(self) -> str:
        parts = self._path[:4]
        text = ""
        for p in parts:
            text += p if p.startswith("[") or not text else "." + p
        return (text + ("..." if len(self._path) > 4 else "")) or "(top level)"

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        segment = None
        if isinstance(index, ScalarNode):
            segment = str(index.value)
            self._check_duplicate(parent, index)
        elif isinstance(index, int):
            segment = f"[{index}]"
        if segment is not None:
            self._path.append(segment)
        self._depth += 1
        try:
            return self._compose_counted(parent, index)
        finally:
            self._depth -= 1
            if segment is not None:
                self._path.pop()

    def _compose_counted(self, parent: Node | None, index: Any) -> Node:
        depth = self._depth
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if event.anchor in self._open:
                raise YamlLimitError(self._where(), f"alias *{event.anchor} refers to a mapping or "
                                     "list that contains it; aliases may not form cycles")
            if target is not None:
                self._grow(self._size[id(target)])
                self._check_depth(depth + self._height[id(target)])
            return super().compose_node(parent, index)
        self._check_depth(depth)
        before = self._total
        self._grow(1)
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._open.add(anchor)
        node = super().compose_node(parent, index)
        self._open.discard(anchor)
        if isinstance(node, SequenceNode):
            kids = node.value
        elif isinstance(node, MappingNode):
            kids = [n for pair in node.value for n in pair]
        else:
            kids = None
        self._size[id(node)] = self._total - before
        self._height[id(node)] = 0 if kids is None else \
            1 + max((self._height.get(id(k), 0) for k in kids), default=0)
        return node

    def _grow(self, n: int) -> None:
        self._total += n
        if self._total > MAX_NODES:
            raise YamlLimitError(self._where(), f"the document holds more than {MAX_NODES:,} values "
                                 "once its aliases are expanded; write the data out, or use a CSV")

    def _check_depth(self, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise YamlLimitError(self._where(), f"nested more than {MAX_DEPTH} levels deep; "
                                 f"at most {MAX_DEPTH} levels of mappings and lists are allowed")

    def _check_duplicate(self, parent: Node | None, key: ScalarNode) -> None:
        if not isinstance(parent, MappingNode) or key.tag == _MERGE_TAG:
            return
        seen = self._keys.setdefault(id(parent), set())
        ident = (key.tag, key.value)
        if ident in seen:
            line = key.start_mark.line + 1 if key.start_mark else "?"
            self._path.append(str(key.value))
            where = self._where()
            self._path.pop()
            raise YamlLimitError(where, f"duplicate key (again on line {line}); each key may "
                                 "appear only once in a mapping")
        seen.add(ident)


def parse_yaml(data: bytes | str, where: str) -> Any:
    """Parse YAML text (bytes must be UTF-8) with the limits above; errors name `where`."""
    if isinstance(data, bytes):
        if len(data) > MAX_BYTES:
            raise ConfigError(where, "", f"file is {len(data):,} bytes; YAML files may be at most "
                              f"{MAX_BYTES:,} bytes (put large data in a CSV)")
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(where, "", f"not a UTF-8 text file (byte {exc.start}); save it as "
                              "UTF-8") from None
    elif len(data) > MAX_BYTES:
        raise ConfigError(where, "", f"text is {len(data):,} characters; at most {MAX_BYTES:,}")
    loader = None
    try:
        loader = LimitedLoader(data)      # the reader already checks characters here
        return loader.get_single_data()
    except YamlLimitError as exc:
        raise ConfigError(where, exc.key, exc.message) from None
    except yaml.YAMLError as exc:
        raise ConfigError(where, "", "not valid YAML" + _describe(exc)) from None
    except RecursionError:
        raise ConfigError(where, "", f"nested too deeply; at most {MAX_DEPTH} levels") from None
    finally:
        if loader is not None:
            loader.dispose()


def _describe(exc: yaml.YAMLError) -> str:
    """': PROBLEM at line L, column C (CONTEXT)' from a PyYAML error, on one line."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem is None:
        text = " ".join(str(exc).replace(' in "<unicode string>",', " at").split())
        return ": " + text[:200]
    text = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    text += f": {problem}"
    context = getattr(exc, "context", None)
    if context:
        text += f" ({context})"
    return " " + " ".join(text.split())[:200]


def read_yaml_file(path: str, what: str = "YAML file") -> Any:
    """Read and parse the YAML file at `path`; a missing, unreadable, oversized, non-UTF-8 or
    malformed file is a ConfigError naming `path`."""
    if not os.path.isfile(path):
        raise ConfigError(path, "", f"no such {what}")
    try:
        size = os.path.getsize(path)
        if size > MAX_BYTES:
            raise ConfigError(path, "", f"file is {size:,} bytes; YAML files may be at most "
                              f"{MAX_BYTES:,} bytes (put large data in a CSV)")
        with open(path, "rb") as fh:
            data = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the {what}: {exc.strerror or exc}") from None
    return parse_yaml(data, path)
