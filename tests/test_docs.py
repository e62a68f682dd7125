"""The documentation's code runs as written, and its links lead somewhere.

Each ```python block of ``docs/*.md`` (except ``docs/predict.md``, whose example downloads a model
from the hub) runs in a fresh namespace, as ``tests/test_readme.py`` runs the README's. Every
relative link ``](path)`` of the README, the docs, the benchmarks' README and the changelog must
name a file or folder of the repository (anchors are not checked). The pages a newcomer reads
carry no commit hashes, load averages or tracker issue numbers (the README, the docs and the
changelog).
"""
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# Pages whose python blocks need the network (a hub download) and so are not run here.
NETWORK_PAGES = {"predict.md"}
LINKED_PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md",
                *sorted(DOCS.glob("*.md"))]
USER_PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted(DOCS.glob("*.md"))]

BLOCK = re.compile(r"```python\n(.*?)```", flags=re.S)
LINK = re.compile(r"\]\(([^()\s]+)\)")
# a hub id handed to from_pretrained, e.g. from_pretrained("mexca/...")
HUB_DOWNLOAD = re.compile(r"from_pretrained\(\s*[\"'][\w.-]+/[\w.-]+[\"']")
COMMIT_HASH = re.compile(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b")
LOAD_AVERAGE = re.compile(r"load average|loadavg", flags=re.I)
ISSUE_NUMBER = re.compile(r"\bissues?\s+#?\d+|(?<![\w&/])#\d+\b", flags=re.I)


def _python_blocks():
    for page in sorted(DOCS.glob("*.md")):
        if page.name in NETWORK_PAGES:
            continue
        for number, block in enumerate(BLOCK.findall(page.read_text()), 1):
            yield pytest.param(page, block, id=f"{page.name}-{number}")


@pytest.mark.parametrize("page, block", list(_python_blocks()))
def test_docs_python_blocks_run(page, block, capsys):
    if HUB_DOWNLOAD.search(block):
        pytest.skip(f"{page.name}: the block downloads a model from the hub")
    exec(compile(block, str(page), "exec"), {})
    assert capsys.readouterr().out, f"{page.name}: the example printed nothing"


def test_docs_have_python_examples():
    """The docs pages that hold examples keep them (a renamed fence would skip them silently)."""
    pages = {param.values[0].name for param in _python_blocks()}
    assert {"checkpoints.md", "layers.md", "training.md"} <= pages


def _relative_links(page):
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # a URL (https:, mailto:) or an anchor on the same page
        yield target.split("#", 1)[0]


@pytest.mark.parametrize("page", LINKED_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = [target for target in _relative_links(page)
               if not (page.parent / target).exists()]
    assert not missing, f"{page.relative_to(ROOT)}: links to missing files {missing}"


@pytest.mark.parametrize("page", USER_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_pages_carry_no_history_markers(page):
    text = page.read_text()
    found = {name: pattern.findall(text) for name, pattern in
             (("commit hashes", COMMIT_HASH), ("load averages", LOAD_AVERAGE),
              ("issue numbers", ISSUE_NUMBER))}
    found = {name: hits for name, hits in found.items() if hits}
    assert not found, f"{page.relative_to(ROOT)}: {found}"


MATH_SECTION = re.compile(r"^## (\d+)\. ", flags=re.M)
MATH_CITATION = re.compile(r"docs/math\.md §(\d+)(?:-(\d+))?(?:, §(\d+))?")


def test_every_math_section_the_code_cites_exists():
    """Docstrings cite the math as ``docs/math.md §N`` (or ``§N-M``): each N names a section."""
    sections = set(MATH_SECTION.findall((DOCS / "math.md").read_text()))
    cited = {}
    for path in sorted((ROOT / "pyg_mefl").rglob("*.py")):
        for match in MATH_CITATION.finditer(path.read_text()):
            for number in filter(None, match.groups()):
                cited.setdefault(number, path.relative_to(ROOT))
    assert cited, "no citation found: the pattern no longer matches the docstrings"
    missing = {number: str(path) for number, path in cited.items() if number not in sections}
    assert not missing, f"docs/math.md has no section {missing}"
