"""The ```python blocks of README.md and docs/*.md run, as written, against the offline models.

Each block is extracted with a regex and ``exec``-uted in a fresh namespace, in a temporary working
folder, with the Hub ids users type (``HuggingFaceTB/SmolLM2-135M-Instruct``, ...) redirected to the
offline folders of :mod:`hf_calib.assets` and ``huggingface_hub`` talking to the in-process ``FakeHub``
of ``test_hub_push.py`` (with a fake token, so a block that pushes "if you have a token" does push, and
the test checks the upload). A failing block fails its test, named by file, line and heading, and the
traceback points at the Markdown line.

Convention for the docs, written as an HTML comment on the line right before a block's opening fence:

* no comment: the block is a complete program and runs on its own;
* ``<!-- continues -->``: the block continues the previous block of the same page; it runs after it,
  in the same namespace (the page's blocks concatenated in order), as one test;
* ``<!-- fragment -->``: an excerpt by design (an API listing, a call inside code the reader already
  has); it is not run, but every ``hf_calib`` import in it must still resolve
  (``test_fragment_imports_resolve``).

README.md has no fragments: every block there is a complete program (``test_readme_blocks_are_programs``).
Runnable blocks use the real 135M model with a few steps and short sequences (about 2 to 4 minutes in all
on 2 CPU cores); they are marked ``integration``.
"""

from __future__ import annotations

import ast
import gc
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FAKE_TOKEN = "hf_FAKEreadmeTOKEN000000000000000"

# A fenced python block, with the line before it (where a marker comment may sit).
_BLOCK = re.compile(r"^(?P<before>[^\n]*)\n```python[ \t]*\n(?P<code>.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*(fragment|continues)\s*-->")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
_FENCED = re.compile(r"^```.*?^```", re.M | re.S)  # any fenced block (its "# comments" are no headings)


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the first code line
    heading: str
    code: str
    marker: str | None  # None, "fragment" or "continues"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT).as_posix()}:{self.line - 1}"

    def compiled(self):
        # Padding with blank lines makes tracebacks name the Markdown line of the failing statement.
        return compile("\n" * (self.line - 1) + self.code, str(self.page.relative_to(ROOT)), "exec")


@dataclass
class Program:
    """One test: a block and the blocks that continue it."""

    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        first = self.blocks[0]
        more = f" (+{len(self.blocks) - 1} continuing)" if len(self.blocks) > 1 else ""
        return f"{first.where} [{first.heading}]{more}"


def extract_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _BLOCK.finditer(text):
        start = text.count("\n", 0, match.start("code")) + 1
        headings = _HEADING.findall(_FENCED.sub("", text[: match.start()]))
        marker = _MARKER.search(match.group("before"))
        blocks.append(
            Block(page, start, headings[-1] if headings else page.name, match.group("code"), marker and marker.group(1))
        )
    return blocks


def all_blocks() -> list[Block]:
    return [block for page in PAGES for block in extract_blocks(page)]


def programs() -> list[Program]:
    out: list[Program] = []
    for page in PAGES:
        current: Program | None = None
        for block in extract_blocks(page):
            if block.marker == "fragment":
                continue
            if block.marker == "continues":
                if current is None:
                    raise ValueError(f"{block.where}: <!-- continues --> but no runnable block before it on the page")
                current.blocks.append(block)
                continue
            current = Program([block])
            out.append(current)
    return out


PROGRAMS = programs()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def offline_hub_ids(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Redirect the Hub ids the examples use to the offline asset folders (``from_pretrained`` of the Auto classes)."""
    import transformers

    from hf_calib import assets

    folders = {
        "HuggingFaceTB/SmolLM2-135M-Instruct": str(assets.smollm2_path()),
        "sentence-transformers/all-MiniLM-L6-v2": str(assets.minilm_path()),
    }
    for name in ("AutoTokenizer", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModel"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained  # bound classmethod

        def redirected(_cls, name_or_path, *args, _original=original, **kwargs):
            return _original(folders.get(str(name_or_path), name_or_path), *args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", classmethod(redirected))
    return folders


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """``test_hub_push.FakeHub`` behind huggingface_hub, and a fake token so that guarded pushes happen."""
    import httpx2
    import huggingface_hub
    from huggingface_hub.utils._http import default_client_factory
    from test_hub_push import FakeHub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no lookup of anything else on the Hub
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    for module in (huggingface_hub._commit_api, huggingface_hub.hf_api):
        monkeypatch.setattr(module, "is_xet_available", lambda: False)
    hub = FakeHub()
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    try:
        yield hub
    finally:
        huggingface_hub.set_client_factory(default_client_factory)


# ------------------------------------------------------------------------------------------------ tests
@pytest.mark.integration
@pytest.mark.parametrize("program", PROGRAMS, ids=[p.name for p in PROGRAMS])
def test_block_runs(program: Program, offline_hub_ids, fake_hub, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    try:
        for block in program.blocks:
            try:
                exec(block.compiled(), namespace)
            except Exception as exc:
                raise AssertionError(f"{block.where} [{block.heading}] raised {type(exc).__name__}: {exc}") from exc
    finally:
        namespace.clear()
        gc.collect()
    pushes = [b for b in program.blocks if re.search(r"^[^#\n]*\.push_to_hub\(", b.code, re.M)]
    if pushes:  # a push guarded by "if you have a token" must have reached the (fake) Hub
        assert fake_hub.commits, f"{pushes[0].where}: push_to_hub was never called"
        assert all("calibration.json" in c["files"] for c in fake_hub.commits), "a push without the calibration"
    printed = capsys.readouterr()
    assert FAKE_TOKEN not in printed.out + printed.err


def test_readme_blocks_are_programs() -> None:
    readme = extract_blocks(ROOT / "README.md")
    assert len(readme) >= 3, "README.md lost its quick starts"
    assert [b.where for b in readme if b.marker] == [], "README blocks must be complete programs"


def test_every_block_is_run_or_marked() -> None:
    run = {b.where for p in PROGRAMS for b in p.blocks}
    fragments = {b.where for b in all_blocks() if b.marker == "fragment"}
    assert run | fragments == {b.where for b in all_blocks()}
    assert not run & fragments
    # A ```python fence the regex misses would be neither run nor counted.
    fences = sum(page.read_text(encoding="utf-8").count("```python") for page in PAGES)
    assert fences == len(all_blocks())


def _imports(code: str) -> list[ast.stmt]:
    """The import statements of a block, even when the rest of it is not valid Python (an API listing)."""
    try:
        tree = ast.parse(code)
        return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)]
    except SyntaxError:
        statements = re.findall(r"^(?:from\s+\S+\s+)?import\s+(?:\([^)]*\)|[^\n]*)", code, re.M)
        return [ast.parse(s).body[0] for s in statements]


FRAGMENTS = [b for b in all_blocks() if b.marker == "fragment"]


@pytest.mark.parametrize("block", FRAGMENTS, ids=[f"{b.where} [{b.heading}]" for b in FRAGMENTS])
def test_fragment_imports_resolve(block: Block) -> None:
    """A fragment is not run, but the names it imports from hf_calib (and ``hf_calib.X`` it calls) exist."""
    import importlib

    for node in _imports(block.code):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "hf_calib":
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)]
            assert not missing, f"{block.where}: {node.module} has no {missing}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hf_calib":
                    importlib.import_module(alias.name)
    import hf_calib

    for name in re.findall(r"\bhf_calib\.([A-Za-z_]\w*)\(", block.code):
        assert hasattr(hf_calib, name), f"{block.where}: hf_calib has no {name}"


def test_demo_runs_with_a_fixed_thread_count(monkeypatch) -> None:
    """The README's demo numbers do not depend on the machine's core count or ``OMP_NUM_THREADS``."""
    import torch

    from hf_calib.recipes import demo

    seen = []
    monkeypatch.setattr(demo.Demo, "_run", lambda self: seen.append(torch.get_num_threads()))
    previous = torch.get_num_threads()
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            demo.Demo.run(object.__new__(demo.Demo))  # the patched body needs no state
            assert torch.get_num_threads() == n, "the caller's thread count is restored"
    finally:
        torch.set_num_threads(previous)
    assert seen == [demo.DEMO_THREADS, demo.DEMO_THREADS]
