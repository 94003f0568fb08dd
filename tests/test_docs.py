"""Documentation that lives in the repository and says only true things: the figures rendered from the
results files (``scripts/render_docs.py``) equal what is committed, the configs table lists every config
file, every repository path the docs name exists, and no file cites a specification the repo lacks."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _renderer():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts" / "render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render_docs = _renderer()


# ------------------------------------------------------------------------------------------------
# (1) every rendered file and block equals its rendering


def test_rendered_docs_equal_their_rendering():
    """docs/benchmarks.md and README.md's marked blocks (those present) are what the results files and
    configs render to; a marker opened and not closed raises here."""
    problems = render_docs.check(ROOT)
    assert not problems, "\n\n".join(problems) + "\n\nre-render with: python scripts/render_docs.py"


def test_rendering_is_deterministic():
    first = render_docs.render_benchmarks_md(ROOT)
    assert first == render_docs.render_benchmarks_md(ROOT)
    for name, block in render_docs.BLOCKS.items():
        assert block(ROOT) == block(ROOT), name


def test_an_unclosed_marker_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- rendered:configs -->\nold table\n")
    with pytest.raises(render_docs.MarkerError, match="'configs' is opened .* and not closed"):
        render_docs.check_readme(ROOT, readme)


def test_blocks_without_markers_and_unknown_blocks_are_left_alone(tmp_path):
    text = "# x\n\nno markers\n\n<!-- rendered:someone_elses -->\nkept\n<!-- /rendered:someone_elses -->\n"
    assert render_docs.render_readme(text, ROOT) == text
    assert render_docs.unknown_blocks(text) == ["someone_elses"]


#: minimal results of the kinds no committed file has yet, in their scripts' formats
SYNTHETIC = {
    "make_train": {
        "experiment": "zs_sbir",
        "settings": {"trainer.max_epochs": 8, "eval.pq_m": 2, "eval.pq_k": 32, "eval.fusion_lambda": 0.2},
        "runs": [
            {"seed": s, "seconds": 300.0 + s, "test/map_all": 0.28 + s / 100, "test/chance_map_all": 0.067}
            for s in (0, 1)
        ],
        "mean": {"test/map_all": 0.285, "test/chance_map_all": 0.067},
        "std": {"test/map_all": 0.007, "test/chance_map_all": 0.0},
        "untrained": {"seed": 0, "seconds": 40.0, "test/map_all": 0.137, "test/p_100": 0.108},
    },
    "cli_start": {
        "baseline": "python -c 'import torch'",
        "commands": [
            {"name": "import torch", "command": "python -c import torch", "seconds": 2.0, "ratio": 1.0},
            {
                "name": "config",
                "command": "sketchquant config zs_sbir",
                "seconds": 1.0,
                "ratio": 0.5,
                "goal": 0.7,
            },
        ],
    },
    "serve_load": {
        "setup": {"gallery": "synthetic", "photos": 600},
        "load": {"clients": 8, "searches": 400, "errors": 0, "throughput_per_s": 61.5, "p50_ms": 120.0},
        "rebuild": {"clients": 8, "searches": 400, "errors": 0, "rebuild_s": 30.2, "switched": True},
        "goals_met": {"errors_load": True},
    },
    "some_study": {"study": "x", "value": 0.5},
}


def test_every_kind_renders_with_its_record(tmp_path):
    results = tmp_path / render_docs.RESULTS
    results.mkdir(parents=True)
    for stem, doc in SYNTHETIC.items():
        (results / f"{stem}.json").write_text(json.dumps(doc))
    shutil.copy(ROOT / render_docs.RESULTS / "eval_speed.json", results)
    md = render_docs.render_benchmarks_md(tmp_path)
    for stem in [*SYNTHETIC, "eval_speed"]:
        assert f'<a id="{stem}"></a>' in md, stem
    assert "| trained, raw | 0.285 ± 0.007 |" in md
    assert "| `config` | 1.00 | 0.50× | ≤ 0.7× |" in md
    assert "No render function for this kind of file yet" in md  # some_study: the plain fallback
    assert md.count("command not recorded; commit not recorded") == len(SYNTHETIC) + 1
    headlines = render_docs.block_headlines(tmp_path)
    assert "(docs/benchmarks.md#eval_speed)" in headlines and "61.5 searches/s" in headlines
    assert "`config` 0.50×" in headlines
    assert "| same network before training" in render_docs.block_make_train(tmp_path)
    assert "not measured yet" in render_docs.block_make_train(tmp_path / "nowhere")


def test_kind_and_number_formats():
    assert render_docs.kind_of("search_speed_build") == "search_speed"
    assert render_docs.kind_of("eval_speed") == "eval_speed" and render_docs.kind_of("studies_x") is None
    assert [render_docs.sig(x) for x in (0.2471, 20.54, 1.0, 115.9, 9450.2)] == [
        "0.247",
        "20.5",
        "1.00",
        "116",
        "9,450",
    ]
    assert render_docs.ratio(1.2666) == "1.27×" and render_docs.score(0.28449) == "0.284"
    assert render_docs.pct(-7.73) == "−7.7 %"
    # a p-value at the sign-flip floor 1/(R + 1) is a bound, not a figure; files without R print as is
    assert render_docs.p_cell({"p_value": 1 / 10001, "resamples": 10000}) == "< 0.0001"
    assert render_docs.p_cell({"p_value": 1 / 2001, "resamples": 2000}) == "< 0.0005"
    assert render_docs.p_cell({"p_value": 0.0681, "resamples": 10000}) == "0.068"
    assert render_docs.p_cell({"p_value": 1 / 10001}) == "0.000100"


def test_seed_paired_difference_by_hand():
    # b − a = 0.1, 0.2, 0.0: mean 0.1, sd 0.1, half-width t(0.975, 2) · 0.1 / √3 = 4.303 · 0.05774 = 0.2484
    assert render_docs.seed_difference([0.1, 0.2, 0.3], [0.2, 0.4, 0.3]) == "+0.100 [-0.148, +0.348]"
    assert render_docs.seed_difference([0.5], [0.25]) == "-0.250"  # one seed: no interval
    with pytest.raises(ValueError):
        render_docs.seed_difference([0.1, 0.2], [0.3])  # seeds must pair


def test_folder_recipe_block_gives_each_seed(tmp_path):
    # a hand-made check: the recipe's seeds in run order (the "no seed below" is read from them)
    metric = "test/fused/map_all"

    def runs(values):
        return [{"seed": i, "test": {metric: v}} for i, v in enumerate(values)]

    doc = {
        "metrics": [metric],
        "seeds": [0, 1, 2],
        "runs": {"digits": {"untrained": runs([0.4, 0.4, 0.4]), "recipe": runs([0.52, 0.38, 0.5])}},
        "summary": {
            "digits": {
                "untrained": {metric: {"mean": 0.4, "std": 0.0, "n": 3}},
                "recipe": {metric: {"mean": 0.4667, "std": 0.0757, "n": 3}},
            }
        },
        "comparisons": [
            {"set": "digits", "a": "untrained", "b": "recipe", "metric": metric, "diff": 0.0667}
            | {"ci_low": 0.01, "ci_high": 0.12, "p_value": 0.03}
            | {
                "per_class": [
                    {
                        "class": "one",
                        "a_mean": 0.5,
                        "b_mean": 0.3,
                        "diff": -0.2,
                        "ci_low": -0.3,
                        "ci_high": -0.1,
                    },
                    {
                        "class": "two",
                        "a_mean": 0.3,
                        "b_mean": 0.6,
                        "diff": 0.3,
                        "ci_low": 0.2,
                        "ci_high": 0.4,
                    },
                ]
            }
        ],
    }
    (tmp_path / render_docs.RESULTS).mkdir(parents=True)
    (tmp_path / render_docs.RESULTS / "study_folder_recipe.json").write_text(json.dumps(doc))
    block = render_docs.block_folder_recipe(tmp_path)
    head, _, row = block.splitlines()[:3]
    assert "trained, per seed" in head
    assert "| 0.520 / 0.380 / 0.500 |" in row and "| 0.467 ± 0.076 |" in row and "+0.067" in row
    assert block.splitlines()[-1] == (
        f"- digits, `{metric}`: one 0.500 → 0.300 (-0.200 [-0.300, -0.100]), "
        "two 0.300 → 0.600 (+0.300 [+0.200, +0.400])"
    )


# ------------------------------------------------------------------------------------------------
# (2) an edited figure is detected


def _edit_a_figure(text: str) -> tuple[str, str]:
    """``text`` with the first 3-decimal figure of a table row changed; and that row as edited."""
    for line in text.splitlines():
        m = re.search(r"\b(\d)\.(\d{3})\b", line) if line.startswith("| ") else None
        if m:
            changed = f"{m.group(1)}.{(int(m.group(2)) + 1) % 1000:03d}"
            edited = line[: m.start()] + changed + line[m.end() :]
            return text.replace(line, edited, 1), edited
    raise AssertionError("no figure found in a table")


def test_an_edited_figure_in_benchmarks_md_is_detected(tmp_path):
    copy = tmp_path / "benchmarks.md"
    shutil.copy(ROOT / render_docs.BENCHMARKS_MD, copy)
    assert render_docs.check_benchmarks_md(ROOT, copy) == []
    text, edited = _edit_a_figure(copy.read_text())
    copy.write_text(text)
    problems = render_docs.check_benchmarks_md(ROOT, copy)
    assert len(problems) == 1 and "stale" in problems[0]
    assert f"-{edited}" in problems[0].splitlines()  # the difference names the edited row


def test_an_edited_figure_in_a_readme_block_is_detected(tmp_path):
    readme = tmp_path / "README.md"
    blocks = "".join(
        f"<!-- rendered:{name} -->\n<!-- /rendered:{name} -->\n\n" for name in render_docs.BLOCKS
    )
    readme.write_text(render_docs.render_readme("# README\n\n" + blocks, ROOT))
    assert render_docs.check_readme(ROOT, readme) == []
    text = readme.read_text()
    edited = text.replace(
        "[`zs_sbir`](configs/experiment/zs_sbir.yaml) | ",
        "[`zs_sbir`](configs/experiment/zs_sbir.yaml) | x",
        1,
    )
    assert edited != text
    readme.write_text(edited)
    problems = render_docs.check_readme(ROOT, readme)
    assert any("block 'configs' is stale" in p for p in problems), problems


# ------------------------------------------------------------------------------------------------
# (3) the configs table lists every config file


def test_configs_block_lists_every_config_file():
    block = render_docs.block_configs(ROOT)
    files = sorted((ROOT / "configs").glob("*/*.yaml"))
    assert files
    for path in files:
        rel = path.relative_to(ROOT).as_posix()
        assert f"[`{path.stem}`]({rel})" in block, f"{rel} is missing from the configs table"
    for group in {p.parent.name for p in files}:
        assert f"`{group}/`" in block, group
    rows = [line for line in block.splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == len(files)


def test_first_comment_line_is_one_sentence(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("# First sentence. Second one.\n# more\nkey: 1\n")
    assert render_docs.first_comment_line(f) == "First sentence."
    f.write_text("# A sentence that runs on,\n# into the next line.\nkey: 1\n")
    assert render_docs.first_comment_line(f) == "A sentence that runs on …"
    f.write_text("key: 1\n")
    assert render_docs.first_comment_line(f) == ""


# ------------------------------------------------------------------------------------------------
# (4) every repository path written in README.md and docs/*.md exists
#
# What counts as a repository path (outside fenced code blocks, which hold example commands with the
# reader's own files: `photos/`, `my-gallery`, `/data/Sketchy`):
# - a markdown link target: resolved from the document's folder, `#anchor` dropped; URLs
#   (`scheme://`, `mailto:`) and same-page anchors (`#...`) are not paths;
# - a whitespace-separated token of an inline code span (`...`), trailing punctuation dropped, that
#   contains a `/` and either starts with a top-level entry of the repository (`configs/...`,
#   `benchmarks/results/eval_speed.json`, `docs/method.md`) or ends with a source-file suffix
#   (`app/cli.py` must then exist as written, from the root).
# Not paths, by these rules:
# - placeholders and patterns: a token with any of `< > * ? { } [ ] …` or `...`
#   (`runs/<experiment>/<run>/...`, `benchmarks/results/*.json`), or a folder name in capitals
#   (`GALLERY/manifest.json`);
# - absolute and home paths (`/path/to/weights.pth`, `/api/search`, `~/.cache/sketchquant`), `$VARS`;
# - `key=value` overrides (`data.root=/data/x`, `monitor=val/acc`) and formulas (`^`, `·`, `(`);
# - run outputs, made by running the code, not shipped: anything under `data/`, `runs/`, `wandb/`,
#   `.venv/`, `build/`;
# - logged metric names (`test/fused/map_all`, `val/acc`): their first segment is no repository
#   entry and they have no file suffix;
# - a bare file name without `/` (`metrics.csv`, `store.py`): it names a file in a folder the text gives.

SOURCE_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".sh", ".sbatch", ".c", ".cfg")
OUTPUTS = ("data", "runs", "wandb", ".venv", "build")
PLACEHOLDER = re.compile(r"[<>*?{}\[\]…]|\.\.\.")
NOT_A_PATH = re.compile(r"^[/~$]|=|\^|·|\(|\)|://")
CAPITALS = re.compile(r"^[A-Z][A-Z0-9_]+$")
FENCE = re.compile(r"^\s*(```|~~~)")
CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _top_level() -> set[str]:
    return {p.name for p in ROOT.iterdir()} - set(OUTPUTS) - {".git"}


def _is_repo_path(token: str, top: set[str]) -> bool:
    if "/" not in token or PLACEHOLDER.search(token) or NOT_A_PATH.search(token):
        return False
    first = token.split("/", 1)[0]
    if first in OUTPUTS or CAPITALS.match(first):
        return False
    return first in top or token.endswith(SOURCE_SUFFIXES)


def paths_in(doc: Path) -> list[tuple[int, str, Path]]:
    """``(line number, as written, resolved path)`` of every repository path ``doc`` names."""
    top, out, fenced = _top_level(), [], False
    for n, line in enumerate(doc.read_text().splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if fenced:
            continue
        for m in LINK.finditer(line):
            target = m.group(1)
            if target.startswith("#") or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue
            target = target.split("#", 1)[0].split("?", 1)[0]
            if target:
                out.append((n, target, (doc.parent / target).resolve()))
        for m in CODE.finditer(line):
            for token in m.group(1).split():
                token = token.rstrip(".,;:!")
                if _is_repo_path(token, top):
                    out.append((n, token, ROOT / token.rstrip("/")))
    return out


def test_path_rules():
    top = _top_level()
    yes = ["configs/experiment/zs_sbir.yaml", "benchmarks/results/eval_speed.json", "docs/method.md"]
    yes += ["sketchquant/app/cli.py", "scripts/slurm/", "app/cli.py"]
    no = ["runs/<experiment>/<run>/", "benchmarks/results/*.json", "/path/to/weights.pth", "~/.cache/x"]
    no += ["data/glyphs", "runs/zs_sbir", "test/fused/map_all", "val/acc", "GALLERY/manifest.json"]
    no += ["monitor=val/acc", "https://example.org/a.py", "metrics.csv", "d/M", "runs/.../best.ckpt"]
    assert all(_is_repo_path(t, top) for t in yes), [t for t in yes if not _is_repo_path(t, top)]
    assert not any(_is_repo_path(t, top) for t in no), [t for t in no if _is_repo_path(t, top)]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_path_in_the_docs_exists(doc):
    missing = [f"{doc.name}:{n}: {written}" for n, written, path in paths_in(doc) if not path.exists()]
    assert not missing, "paths that do not exist:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------------
# (5) the code cites docs/method.md, not a specification file the repository does not have

SPEC_REFERENCES = (b"SPEC" + b".md", ("SPEC " + "\u00a7").encode())  # not spelled out: this file would match


def _repo_files() -> list[Path]:
    """Tracked files and new ones not ignored (git), else every file outside the run outputs."""
    try:
        out = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
        return sorted({ROOT / name for name in out.decode().split("\0") if name})
    except (OSError, subprocess.CalledProcessError):
        skip = {*OUTPUTS, ".git"}
        return sorted(p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts))


def test_no_reference_to_a_spec_file_the_repo_lacks():
    citing = []
    for path in _repo_files():
        if path.is_file() and any(ref in path.read_bytes() for ref in SPEC_REFERENCES):
            citing.append(path.relative_to(ROOT).as_posix())
    assert not citing, "cite docs/method.md §X instead of the specification in:\n" + "\n".join(citing)


def test_folder_recipe_rows_name_a_baseline_other_than_the_untrained_network():
    # the recipe against the untrained network at another size must not read as the plain check
    assert render_docs.against({"a": "untrained", "b": "recipe"}) == ""
    assert render_docs.against({"a": "untrained_128", "b": "recipe"}) == ", against `untrained_128`"
