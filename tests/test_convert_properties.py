"""Properties users rely on, over every fixture: deterministic, idempotent, no-torch files untouched,
inputs never modified, atomic writes; and the fast path equal to the plain one it replaces."""

import json
import os
import shutil
from pathlib import Path

import libcst as cst
import pytest
from libcst.metadata import MetadataWrapper, PositionProvider

from porter import convert_source
from porter.cli import main
from porter.convert import traverse
from porter.convert.annotate import annotate_source
from porter.convert.pipeline import _convert
from porter.convert.source_index import SourceIndex, StatementCode

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = sorted(p for p in (ROOT / "fixtures").rglob("*.py") if "expected" not in p.parts)
IDS = [f"{p.parent.name}/{p.stem}" for p in FIXTURES]
NOT_YET_IDEMPOTENT: set[str] = set()  # (issue 16's gpt/model and gpt/sample convert clean and are idempotent now)


def fixtures_but(unstable: set[str], reason: str):
    return [pytest.param(p, id=i, marks=pytest.mark.xfail(strict=True, reason=reason)) if i in unstable
            else pytest.param(p, id=i) for p, i in zip(FIXTURES, IDS)]
# porter's own sources that never import torch (some name it in strings or comments)
NO_TORCH = [ROOT / "porter" / "convert" / name for name in ("tree.py", "report.py", "notebook.py", "annotate.py")]


def key(conversion):
    return conversion.code, conversion.diagnostics, conversion.changes


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_deterministic_and_equal_to_the_plain_path(path):
    source = path.read_text()
    first = convert_source(source, filename=str(path))
    assert key(convert_source(source, filename=str(path))) == key(first)
    # the prefilter, the traversal engine and the spliced code generation change nothing
    assert key(_convert(source, str(path), fast=False)) == key(first)


@pytest.mark.parametrize("path", fixtures_but(NOT_YET_IDEMPOTENT, "issue 16: torch left in the output"))
def test_porter_on_its_own_output_changes_nothing_and_reports_nothing_new(path):
    once = convert_source(path.read_text(), filename="x.py")
    twice = convert_source(once.code, filename="x.py")
    assert twice.code == once.code
    assert {(d.code, d.message) for d in twice.diagnostics} <= {(d.code, d.message) for d in once.diagnostics}


# gpt/model: the PT005 notes of removed initialisation name their lines ("lines 130-132"), which the notes
# added above them shift, so a second annotation adds the same note again with other line numbers
@pytest.mark.parametrize("path", fixtures_but({"gpt/model"}, "PT005 messages name line numbers the notes shift"))
def test_annotating_twice_adds_nothing(path):
    source = path.read_text()
    spots = convert_source(source).diagnostics
    once = annotate_source(source, spots)
    assert annotate_source(once, convert_source(once).diagnostics) == once


@pytest.mark.parametrize("path", NO_TORCH, ids=[p.name for p in NO_TORCH])
def test_files_without_torch_come_out_unchanged(path):
    source = path.read_text()
    conversion = convert_source(source)
    assert conversion.code == source and conversion.diagnostics == [] and conversion.changes == []


@pytest.mark.parametrize("path", FIXTURES[:4] + NO_TORCH[:1], ids=IDS[:4] + ["tree"])
def test_positions_are_libcsts(path):
    """SourceIndex's positions are PositionProvider's, node for node."""
    module = cst.parse_module(path.read_text())
    expected = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    index = SourceIndex(module)
    for node, position in expected.items():
        assert index.code_range(node) == position, type(node).__name__
    # and every top-level statement's text is its code
    code = StatementCode(index)
    assert all(code(module, s) == module.code_for_node(s) for s in module.body)


def test_the_traversal_engine_visits_like_libcst():
    """Same callbacks in the same order as libcst, and nothing rebuilt when nothing changed."""
    module = cst.parse_module((ROOT / "fixtures" / "models" / "transformer_block.py").read_text())
    calls = {}
    for engine in ("libcst", "porter"):
        seen = calls[engine] = []

        class Record(cst.CSTTransformer):
            def on_visit(self, node):
                seen.append(("visit", type(node).__name__))
                return True

            def on_leave(self, original_node, updated_node):
                seen.append(("leave", type(original_node).__name__))
                return updated_node

        result = module.visit(Record()) if engine == "libcst" else traverse.visit(module, Record())
    assert calls["porter"] == calls["libcst"]
    assert result is module


def test_inputs_are_never_modified_and_writes_are_atomic(tmp_path, monkeypatch, capsys):
    tree = tmp_path / "fixtures"
    shutil.copytree(ROOT / "fixtures", tree, ignore=shutil.ignore_patterns("expected"))
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    out = tmp_path / "out"
    main(["convert", str(tree), "-o", str(out), "-j", "1"])
    assert {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()} == before

    # a write that fails half-way leaves the old file whole and no temporary file behind
    target = out / "models" / "seed_mlp.py"
    old = target.read_bytes()
    real_replace = os.replace

    def failing_replace(src, dst):
        if str(dst).endswith("seed_mlp.py"):
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    capsys.readouterr()
    assert main(["convert", str(tree), "-o", str(out), "--force", "-j", "1"]) == 1  # an error line, no traceback
    assert "porter: error: cannot write" in capsys.readouterr().err
    assert target.read_bytes() == old
    assert not [p for p in out.rglob("*.tmp")]
    assert not [p for p in tmp_path.iterdir() if "porter-tmp" in p.name]


def test_the_report_json_follows_its_schema(tmp_path, capsys):
    tree = tmp_path / "models"
    shutil.copytree(ROOT / "fixtures" / "models", tree)
    main(["convert", str(tree), "-o", str(tmp_path / "out"), "-j", "1"])
    report = json.loads((tmp_path / "out" / "porter_report.json").read_text())
    assert set(report) == {"schema", "porter_version", "mode", "source", "output", "summary", "codes", "files",
                           "copied"}
    assert set(report["summary"]) == {"files", "clean", "issues", "skipped", "failed", "copied", "changes",
                                      "by_severity", "by_code"}
    for f in report["files"]:
        assert set(f) == {"path", "relative", "kind", "status", "changed", "error", "diagnostics", "changes"}
        assert f["status"] in ("clean", "issues", "skipped", "failed")
        for d in f["diagnostics"]:
            assert set(d) == {"code", "severity", "line", "col", "message", "path", "hint"}
        for c in f["changes"]:
            assert set(c) == {"path", "rule", "line", "col", "before", "after"}
    assert sum(report["summary"][s] for s in ("clean", "issues", "skipped", "failed")) == report["summary"]["files"]


# statement kinds (searched within statements alone), expression kinds, and a mix with whitespace
FIND_ALL_KINDS = [cst.SimpleStatementLine, cst.Assign, cst.Return, (cst.Assign, cst.For, cst.IndentedBlock),
                  tuple(traverse._node_kinds()[2]), cst.Name, (cst.Name, cst.Attribute), cst.Call, cst.Subscript,
                  (cst.Call, cst.Assign, cst.For), (cst.Comment, cst.Name), cst.Comma, cst.Lambda]


@pytest.mark.parametrize("path", FIXTURES + [ROOT / "porter" / "convert" / "traverse.py"],
                         ids=IDS + ["traverse"])
def test_find_all_finds_what_libcsts_matchers_find(path):
    """traverse.find_all enters only the subtrees that can hold what it looks for: the same nodes, in the
    same order, as libcst's findall, from the module and from each statement and expression in it; and
    traverse.child_nodes is libcst's `children`."""
    import libcst.matchers as m

    module = cst.parse_module(path.read_text())
    roots = [module, *traverse.find_all(module, tuple(traverse._node_kinds()[2] - {cst.Module}))[1::7],
             *traverse.find_all(module, cst.Call)[::17]]
    for kinds in FIND_ALL_KINDS:
        matcher = m.OneOf(*(m.MatchIfTrue(lambda n, k=k: type(n) is k) for k in
                            (kinds if isinstance(kinds, tuple) else (kinds,))))
        for root in roots:
            assert [id(n) for n in traverse.find_all(root, kinds)] == [id(n) for n in m.findall(root, matcher)]
    for node in traverse.find_all(module, tuple(traverse._node_kinds()[2]))[::5] + roots:
        assert [id(n) for n in traverse.child_nodes(node)] == [id(n) for n in node.children]


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_the_name_walk_finds_what_libcsts_visitor_finds(path):
    from porter.convert.passes.imports import _collect_names, _NameCollector

    module = cst.parse_module(path.read_text())
    visitor = _NameCollector()
    module.visit(visitor)
    names: set[str] = set()
    _collect_names(module, names, None)
    assert names == visitor.names


@pytest.mark.parametrize("source", ["x = {a for *_, a in b}\n", "*_, a = b\n", "y = [*a, b]\n", "y = [*(a), b]\n"])
def test_positions_of_starred_elements_are_libcsts(source):
    """A starred element's comma is generated after its syntactic range (it was counted in)."""
    module = cst.parse_module(source)
    expected = MetadataWrapper(module, unsafe_skip_copy=True).resolve(PositionProvider)
    index = SourceIndex(module)
    assert all(index.code_range(node) == position for node, position in expected.items())


@pytest.mark.parametrize("code", ["np.zeros(3)", "x = jnp.ones(2)\n", "y = jnp.a + np.b", "é np.x", "énp.x", "_np.x",
                                  "pos.x; os.path", "jax.numpy", "partial(f)", "functools.partial(", "x.partial(",
                                  "einops.rearrange", "# jnp.x\nmath.pi", ""])
def test_the_needed_imports_are_found_as_their_patterns_find_them(code):
    """FinalizeImports tries an import's pattern only where its text ('np.') occurs: the same answer as a search."""
    from porter.convert.passes.imports import NEEDED_IMPORTS, _occurs, _required_text

    for _, pattern in NEEDED_IMPORTS:
        assert _required_text(pattern)  # each pattern is of the shape the shortcut reads
        assert _occurs(pattern, code) == (pattern.search(code) is not None), pattern.pattern


@pytest.mark.parametrize("text", ["Block(x)", "MyBlock(x)", "x.Block(y)", "act=Block", "Block", "é Block", "éBlock(",
                                  "_Block(", "Block_(", "Blocks(", "Block2(", "Block (", "f(Block)\nBlock ()",
                                  "self.Block = Block", "Other(Block(Block))", "", "Block\n(x)", "1Block("])
def test_mentions_are_the_lookbehind_patterns(text):
    """rngs_free.mentions tests what comes before a name in Python: the same answer as the pattern that opened
    with a lookbehind."""
    import re
    from porter.convert.rngs_free import mentions

    names = {"Block", "Other", "Block2"}
    pattern = re.compile(r"(?<![\w.])(" + "|".join(map(re.escape, sorted(names))) + r")(?!\w)(\s*\()?")
    called, other = set(), set()
    for match in pattern.finditer(text):
        (called if match.group(2) else other).add(match.group(1))
    assert mentions(names, text) == (called, other)


def test_a_conversion_leaves_no_syntax_tree_to_the_cyclic_collector():
    """The trees a conversion builds are freed by reference counting as it returns (Rewrite.close,
    ConversionContext.release): nodes kept alive by a reference cycle until the collection that follows the
    conversion (pipeline._no_cyclic_gc) are walked there, which cost a tenth of a conversion."""
    import gc

    sources = [p.read_text() for p in sorted((ROOT / "fixtures" / "models").glob("*.py"))]
    for source in sources:
        convert_source(source)  # rules loaded, helpers imported: what stays for good is made
    gc.collect()
    gc.disable()
    try:
        for source in sources:
            convert_source(source)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        nodes = [o for o in gc.garbage if isinstance(o, cst.CSTNode)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not nodes, f"{len(nodes)} nodes in reference cycles, e.g. {type(nodes[0]).__name__}"


@pytest.mark.parametrize("code", ["sum(p.numel() for p in m.parameters())", "any([x for x in y])", "len({1 for _ in a})",
                                  "sum(*[a for a in b])", "max(x=[a for a in b])", "sum((a for a in b), 0)",
                                  "f(a for a in b)", "m.sum(a for a in b)", "sum()", "min([a, b])"])
def test_order_free_consumers_are_the_matchers(code):
    import libcst.matchers as m
    from porter.convert.module_queries import _ORDER_FREE, order_free

    call = cst.parse_expression(code)
    matcher = m.Call(func=m.Name(m.MatchIfTrue(lambda n: n in _ORDER_FREE)), args=[m.Arg(m.GeneratorExp() | m.ListComp())])
    assert order_free(call) is (call.args[0].value if m.matches(call, matcher) else None)


EVERY_SYNTAX = '''\
"""doc"""
from __future__ import annotations
import a.b as c, d
from .e import (f as g,  # why
                h)
@deco(1)
@other
async def fn[T](x: int = 1, /, *args: T, y=lambda q, *, r=2: q, **kw) -> list[T]:
    global G
    async with open(x) as (u, v), w:
        async for i, *j in aiter(x):
            yield i ** -j[1:2, ::3] @ k if (n := i) else not n
    try:
        pass
    except* (E, F) as exc:
        raise G from exc
    finally:
        del x, kw["a"]
    while x < 1 <= y is not None:
        x += 1; continue
    else:
        return {**kw, 'a': [*args], 'b': {1, 2}, 'c': (e for e in x if e), 'd': {k: v for k, v in kw.items()}}
class C(B, metaclass=M):
    x: int = 1
    def m(self):
        nonlocal z
        print(f"{self.x!r:>{width}} {'q'}" "s", sep='', end=b'')
        assert x, "m"
match p:
    case [1, *rest] | {"k": _, **kw} if rest:
        pass
    case Point(x=0, y=(1 | 2) as y) | None:
        pass
type Alias[K] = dict[K, int]
x = yield_ = await_ = 1 if a else 2; y: list[int]
'''


def test_find_all_finds_each_kind_of_node_where_libcst_does():
    """Every libcst node kind, searched for in a module using most of Python's syntax: find_all, which leaves out
    the fields that can hold only whitespace and punctuation, finds what libcst's findall finds."""
    import libcst.matchers as m

    module = cst.parse_module(EVERY_SYNTAX)
    spacing, small, holders = traverse._node_kinds()
    kinds = sorted({type(n) for n in m.findall(module, m.MatchIfTrue(lambda n: True))}, key=lambda k: k.__name__)
    assert len(kinds) > 100
    for kind in kinds + [tuple(holders), tuple(spacing), (cst.Name, cst.Comma)]:
        wanted = kind if isinstance(kind, tuple) else (kind,)
        matcher = m.MatchIfTrue(lambda n: type(n) in wanted)
        assert [id(n) for n in traverse.find_all(module, kind)] == [id(n) for n in m.findall(module, matcher)], kind
