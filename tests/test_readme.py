"""README.md is the front door: its commands are the ones CI runs; its API table is complete."""

import pathlib
import re

import gapjax

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


def test_api_table_lists_every_public_function():
    rows = set(re.findall(r"^\| `(\w+)`", README, re.M))
    public = set(gapjax.__all__) - {"__version__"}
    assert public <= rows, f"missing from README's API table: {sorted(public - rows)}"
    assert rows <= public | {"gapjax"}, f"README lists unknown names: {sorted(rows - public)}"


def test_every_public_function_has_a_docstring_with_an_example():
    for name in set(gapjax.__all__) - {"__version__"}:
        doc = getattr(gapjax, name).__doc__
        assert doc and ">>> " in doc and "Returns:" in doc, name
        assert "{shared}" not in doc, name
