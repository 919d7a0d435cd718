"""The documentation stays in step with the code: messages, settings, commands, code blocks.

Plain unit tests: they read the source and the Markdown pages, and run neither SLURM nor StepUp.
"""

import ast
import re
from dataclasses import dataclass
from importlib.metadata import entry_points

import pytest
from path import Path

from stepup.queue import api, states, wrapper

ROOT = Path(__file__).parent.parent.absolute()
PACKAGE = ROOT / "stepup/queue"
DOCS = ROOT / "docs"
TROUBLESHOOTING = DOCS / "troubleshooting.md"

# A message is keyed by its first words of literal text (placeholders excluded): enough to tell
# the messages apart, few enough that rewording the end of a message keeps the page valid.
KEY_WORDS = 6
# Keys too short to tell a message (it starts with a placeholder and has few words of its
# own), or lines that are output rather than messages, with why they need no page entry.
NOT_ON_PAGE = {
    "Error:": "the prefix of an exception's message, which has its own entry",
    "Skipped:": "the prefix of a job log's error in the job tools, which has its own entry",
    ": skipped.": "`PATH does not exist: skipped.`, on the page under 'The job tools'",
    "job": "`Submitted job ID` and the like, on the page under 'Messages of a step that goes well'",
    "rc=": "the debug line of a query (STEPUP_SBATCH_DEBUG), on the page",
    "Warning:": "the prefix of a warning of the configuration, whose text is on the page",
    "(StepUp Queue VAR)": "the answer of --version, not a message",
}
# Builtin exceptions whose messages reach the user (the step prints `Error: <message>`).
BUILTIN_ERRORS = {"ValueError", "RuntimeError"}


@dataclass(frozen=True)
class Message:
    """A user-facing message in the source: where it is and its key."""

    where: str
    key: str
    pattern: re.Pattern


def error_classes(trees: dict[str, ast.Module]) -> set[str]:
    """The exception classes of the package (their names end with Error) and the builtins."""
    names = set(BUILTIN_ERRORS)
    for tree in trees.values():
        names.update(
            node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and node.name.endswith("Error")
        )
    return names


def literal_parts(node: ast.expr) -> list[str | None] | None:
    """The parts of a string expression: literal text, or `None` for a placeholder.

    `None` when the expression is no string literal (e.g. a variable).
    """
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [value.value if isinstance(value, ast.Constant) else None for value in node.values]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = literal_parts(node.left), literal_parts(node.right)
        if left is not None and right is not None:
            return left + right
    return None


def message_key(parts: list[str | None]) -> tuple[str, re.Pattern]:
    """The first `KEY_WORDS` words of literal text, and a pattern that finds them on a page.

    A placeholder between them matches any text, so the page may show a message with real
    values filled in. Leading placeholders are left out.
    """
    words = 0
    key = []
    regex = []
    for part in parts:
        if part is None:
            if key and key[-1] != "VAR":
                key.append("VAR")
                regex.append(r".{1,200}?")
            continue
        for token in re.findall(r"\s+|\S+", part):
            if words >= KEY_WORDS:
                break
            if token.isspace():
                if key:
                    key.append(" ")
                    regex.append(r"\s+")
                continue
            key.append(token)
            regex.append(re.escape(token))
            # Punctuation alone is no word.
            words += re.search(r"\w", token) is not None
        if words >= KEY_WORDS:
            break
    while key and key[-1] in ("VAR", " "):
        key.pop()
        regex.pop()
    return "".join(key), re.compile("".join(regex))


def find_messages(sources: dict[str, str]) -> list[Message]:
    """Every message that a step or a tool can show, in the given module sources.

    These are the first arguments of `print(...)`, of the constructors of exceptions (those of
    the package and ValueError, RuntimeError), of `super().__init__(...)` in an exception
    class and of `errors.append(...)`, the list of problems a job tool reports, whenever they
    are string literals or f-strings.
    """
    trees = {name: ast.parse(text, name) for name, text in sources.items()}
    errors = error_classes(trees)
    messages = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            if isinstance(func, ast.Name):
                wanted = func.id == "print" or func.id in errors
            elif isinstance(func, ast.Attribute):
                owner = func.value
                wanted = (
                    func.attr == "__init__"
                    and isinstance(owner, ast.Call)
                    and getattr(owner.func, "id", None) == "super"
                ) or (func.attr == "append" and getattr(owner, "id", None) == "errors")
            else:
                wanted = False
            parts = literal_parts(node.args[0]) if wanted else None
            if parts is None:
                continue
            key, pattern = message_key(parts)
            messages.append(Message(f"{name}:{node.lineno}", key, pattern))
    return messages


def page_text(path: Path) -> str:
    """The Markdown of a page, with every run of white space as one space."""
    return re.sub(r"\s+", " ", path.read_text())


def missing_messages(messages: list[Message], page: str) -> list[str]:
    """The messages without an entry on the page (and not in NOT_ON_PAGE)."""
    return [
        f"{message.where}: {message.key!r}"
        for message in messages
        if message.key not in NOT_ON_PAGE and message.pattern.search(page) is None
    ]


def package_sources() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(PACKAGE.glob("*.py"))}


def test_every_message_on_troubleshooting_page():
    """Each message of a step or a tool appears on the troubleshooting page.

    Add an entry (see docs/development.md) when this fails for a new message.
    """
    messages = find_messages(package_sources())
    # A change of the code that hides the messages from the search must not pass unseen.
    assert len(messages) > 50
    page = page_text(TROUBLESHOOTING)
    assert missing_messages(messages, page) == []


def test_short_keys_are_listed():
    """A message whose key is too short to find it on the page must be in NOT_ON_PAGE."""
    short = [
        f"{message.where}: {message.key!r}"
        for message in find_messages(package_sources())
        if len(message.key.split()) < 3 and message.key not in NOT_ON_PAGE
    ]
    assert short == []


def test_new_message_without_entry_fails():
    """The check finds a new message, whatever its placeholders, and one without an entry."""
    source = (
        "def f(job_id, where):\n"
        "    raise JobError(\n"
        '        f"Job {job_id} was eaten by {where!r}, a grue. "\n'
        '        "Light a lamp."\n'
        "    )\n"
        "class JobError(RuntimeError):\n"
        "    pass\n"
    )
    (message,) = find_messages({"new.py": source})
    assert message.key == "Job VAR was eaten by VAR, a grue."
    page = "The message `Job 12 was eaten by '/home/me', a grue. Light a lamp.` means ..."
    assert missing_messages([message], page) == []
    assert missing_messages([message], page.replace("grue", "bear")) == [
        "new.py:2: " + repr(message.key)
    ]


def test_troubleshooting_page_checks_each_entry():
    """Removing an entry from the page makes the check fail."""
    messages = find_messages(package_sources())
    page = page_text(TROUBLESHOOTING)
    message = next(m for m in messages if m.key.startswith("The job script VAR does not"))
    match = message.pattern.search(page)
    assert match is not None
    assert missing_messages([message], page.replace(match.group(), "")) != []


def test_troubleshooting_page_names_refusals_and_reasons():
    """Each refused option, foreign directive and hopeless pending reason has its entry."""
    page = page_text(TROUBLESHOOTING)
    for long, (short, _) in wrapper._FORBIDDEN_OPTIONS.items():
        assert f"`{long}`" in page
        if short is not None:
            assert f"`{short}`" in page
    for prefix in wrapper._OTHER_SCHEDULERS:
        assert f"`{prefix}`" in page
    for reason in states._HOPELESS:
        assert f"`{reason}`" in page


def test_configuration_page_lists_every_variable():
    """Every environment variable that the package reads has its own entry, exactly once."""
    page = (DOCS / "configuration.md").read_text()
    source = "".join(package_sources().values())
    names = set(re.findall(r"\bSTEPUP_(?:QUEUE|SBATCH|SACCT)_[A-Z_]*[A-Z]\b", source))
    assert "STEPUP_SBATCH_CACHE_TIMEOUT" in names
    entries = re.findall(r"^`(STEPUP_\w+)` \{#(\w+)\}$", page, re.MULTILINE)
    assert sorted(name for name, _ in entries) == sorted(names)
    assert all(anchor == name.lower() for name, anchor in entries)


def test_commands_documented():
    """Every job tool is described in the guide and listed where the commands are listed."""
    commands = [ep.name for ep in entry_points(group="stepup.tools") if "stepup.queue" in ep.value]
    assert sorted(commands) == ["canceljobs", "jobs", "removejobs"]
    usage = (DOCS / "usage.md").read_text() + (DOCS / "jobs.md").read_text()
    for command in commands:
        assert f"stepup {command} [PATH ...]" in usage
    scripts = [
        ep.name for ep in entry_points(group="console_scripts") if "stepup.queue" in ep.value
    ]
    assert "sq-jobs" in scripts
    for page in "README.md", "docs/index.md", "docs/installation.md", "docs/api.md":
        text = (ROOT / page).read_text()
        for command in commands:
            assert f"stepup {command}" in text, (page, command)
        for script in scripts:
            # StepUp runs these two for the steps: only the installation page names them.
            run_by_stepup = script in ("sq-sbatch-and-wait", "sq-sbatch-array")
            if not run_by_stepup or page == "docs/installation.md":
                assert script in text, (page, script)


def test_api_reference():
    reference = (DOCS / "api.md").read_text()
    assert "::: stepup.queue.api" in reference
    for name in api.__all__:
        assert f"- {name}" in reference


def code_lines(path: Path) -> list[tuple[int, str]]:
    """The lines inside fenced code blocks of a Markdown file, without the fence's indentation."""
    lines = []
    fence = None
    indent = 0
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if fence is None and stripped.startswith("```"):
            fence = stripped[: len(stripped) - len(stripped.lstrip("`"))]
            indent = len(line) - len(line.lstrip())
        elif fence is not None and stripped == fence:
            fence = None
        elif fence is not None:
            lines.append((lineno, line[indent:]))
    return lines


# Wider code lines scroll sideways in the rendered site at a width of 1280 pixels (checked in
# a browser: 80 characters fit, 82 do not).
MAX_CODE_WIDTH = 80


@pytest.mark.parametrize(
    "path",
    [*sorted(DOCS.walkfiles("*.md")), ROOT / "README.md"],
    ids=lambda path: str(path.relpath(ROOT)),
)
def test_code_blocks_fit(path: Path):
    """No line of a code block is wider than MAX_CODE_WIDTH."""
    wide = [(lineno, line) for lineno, line in code_lines(path) if len(line) > MAX_CODE_WIDTH]
    assert wide == []


@pytest.mark.parametrize(
    "path",
    sorted(p for p in (DOCS / "examples").walkfiles() if p.suffix != ".md"),
    ids=lambda path: str(path.relpath(ROOT)),
)
def test_example_files_fit(path: Path):
    """The example files, which the example pages include, fit as well."""
    wide = [line for line in path.read_text().splitlines() if len(line) > MAX_CODE_WIDTH]
    assert wide == []
