"""README.md is the front door: its commands are the ones CI runs; its API table is complete."""

import dataclasses
import importlib
import inspect
import pathlib
import re

import pytest

import gapjax
import gapjax.cam
import gapjax.data
import gapjax.models
from gapjax import nn as gnn

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def quickstart_commands() -> list[str]:
    block = re.search(r"<!-- quickstart -->\s*```bash\n(.*?)```", README, re.S)
    assert block, "README.md lost its quickstart block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_gives_two_setup_commands_and_one_test_command():
    commands = quickstart_commands()
    assert len(commands) == 3, commands
    install, main_job, tests = commands
    assert install.startswith("pip install")
    assert main_job.startswith("python -m experiments.")
    assert tests.startswith("python -m pytest")
    # CI runs exactly these commands.
    for command in commands:
        assert command in CI, f"{command!r} is in README.md but not in .ci/run"


def listed_names() -> set[str]:
    """Names in README's tables: those in a row's first cell, and in backticks on module rows."""
    names = set()
    for first, rest in re.findall(r"^\| (`\w+`(?:, `\w+`)*) \|(.*)$", README, re.M):
        cell = re.findall(r"`(\w+)`", first)
        names.update(cell)
        if cell[0][0].isupper() or cell[0].startswith("nin_"):  # module rows list siblings
            names.update(re.findall(r"`(\w+)`", rest))
    return names


CONFIGS = {p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_")}


PUBLIC_MODULES = {
    "gapjax.data": gapjax.data.__all__,
    "gapjax.nn": gnn.__all__,
    "gapjax.models": gapjax.models.__all__,
    "gapjax.cam": gapjax.cam.__all__,
}


def test_api_table_lists_every_public_function():
    rows = set(re.findall(r"^\| `(\w+)`", README, re.M))
    public = set(gapjax.__all__) - {"__version__"}
    assert public <= rows, f"missing from README's API table: {sorted(public - rows)}"
    everything = public.union(*PUBLIC_MODULES.values(), CONFIGS)
    assert rows <= everything | {"gapjax"}, (
        f"README lists unknown names: {sorted(rows - everything)}"
    )


@pytest.mark.parametrize("module", sorted(PUBLIC_MODULES))
def test_readme_lists_every_module_class_and_function(module):
    wanted = set(PUBLIC_MODULES[module]) - {
        "nin",
        "upsample",
    }  # nin: the module; upsample: a helper
    missing = wanted - listed_names()
    assert not missing, f"{module}: missing from README: {sorted(missing)}"


@pytest.mark.parametrize(
    "module", [*sorted(PUBLIC_MODULES), "gapjax.nn.linen", "gapjax.models.nin"]
)
def test_every_public_name_has_a_docstring_with_an_example(module):
    mod = importlib.import_module(module)
    for name in mod.__all__:
        obj = getattr(mod, name)
        if isinstance(obj, dict) or inspect.ismodule(obj):
            continue
        doc = obj.__doc__ or ""
        if (inspect.isclass(obj) and issubclass(obj, Exception)) or not callable(obj):
            continue
        if dataclasses.is_dataclass(obj) and "Attributes:" in doc:
            continue  # a record: its attributes are documented, there is nothing to call
        assert ">>> " in doc, f"{module}.{name} has no example"
        if inspect.isfunction(obj):
            assert "Returns:" in doc, f"{module}.{name}"


def test_every_public_function_has_a_docstring_with_an_example():
    for name in set(gapjax.__all__) - {"__version__"}:
        doc = getattr(gapjax, name).__doc__
        assert doc and ">>> " in doc and "Returns:" in doc, name
        assert "{shared}" not in doc, name
