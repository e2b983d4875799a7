"""docs/architecture.md is true: its "How to add" examples run, and every slimkit import (deferred ones
inside functions too) stays within the table of what each package may import."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from test_import_graph import MODULES, import_graph

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"
TEXT = DOC.read_text()


def _sections():
    """``{"a pass": code, ...}``: the python block of each "## How to add ..." section."""
    out = {}
    for title, body in re.findall(r"^## How to add (.+?)\n(.*?)(?=^## |\Z)", TEXT, re.M | re.S):
        blocks = re.findall(r"```python\n(.*?)```", body, re.S)
        assert len(blocks) == 1, f"section 'How to add {title}' should hold one python example"
        out[title.strip()] = blocks[0]
    return out


EXAMPLES = _sections()


def test_doc_has_the_four_examples():
    assert set(EXAMPLES) == {"a pass", "a gradient compressor", "a latency runtime", "a model"}


@pytest.mark.parametrize("title", sorted(EXAMPLES))
def test_how_to_add_example_runs(title):
    # a fresh interpreter: the example's plug-in must not stay registered in this test session
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", EXAMPLES[title]], capture_output=True, text=True, timeout=240,
                         env=env)
    assert out.returncode == 0, f"'How to add {title}' failed:\n{out.stderr[-3000:]}"


def _layer_table():
    """``(groups, allowed)``: module prefix -> group, group -> groups it may import, from the doc's table."""
    section = TEXT.split("## What each package may import", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\w+) \| (`.+?) \| (.+?) \|$", section, re.M)
    prefixes, allowed = {}, {}
    for group, modules, may in rows:
        for mod in re.findall(r"`([\w.*]+)`", modules):
            full = mod if mod.startswith("slimkit") else f"slimkit.{mod}"
            prefixes[full] = group
        allowed[group] = {g.strip() for g in may.split(",")}
    return prefixes, allowed


def _group(module, prefixes):
    best = max((p for p in prefixes if module == p or module.startswith(p + ".")), key=len, default=None)
    assert best is not None, f"{module} is in no row of docs/architecture.md's table"
    return prefixes[best]


def test_table_covers_every_package():
    prefixes, allowed = _layer_table()
    assert set(allowed) == {"base", "data", "models", "profile", "comm", "compress", "train", "nas", "report", "cli"}
    assert all(groups <= set(allowed) for groups in allowed.values())
    assert {_group(m, prefixes) for m in MODULES} == set(allowed)
    assert _group("slimkit.report.table", prefixes) == "base" and _group("slimkit.report.html", prefixes) == "report"
    assert _group("slimkit.cli.compress", prefixes) == "cli"


def test_imports_follow_the_layer_table():
    prefixes, allowed = _layer_table()
    section = TEXT.split("Known exceptions", 1)[1].split("\n## ", 1)[0]
    exceptions = set(re.findall(r"^- `([\w.]+) -> ([\w.]+)`", section, re.M))
    bad, used = [], set()
    for module, targets in import_graph(deferred=True).items():
        group = _group(module, prefixes)
        for target in targets:
            tgroup = _group(target, prefixes)
            if tgroup == group or tgroup in allowed[group]:
                continue
            if (module, f"slimkit.{tgroup}") in exceptions:  # listed under "Known exceptions"
                used.add((module, f"slimkit.{tgroup}"))
                continue
            bad.append(f"{module} ({group}) imports {target} ({tgroup})")
    assert bad == [], "imports the table does not allow:\n" + "\n".join(sorted(bad))
    assert used == exceptions, f"exceptions listed but no longer needed: {sorted(exceptions - used)}"
