"""docs/settings.md is what photonstream.config.reference makes; every setting has a description; every environment
variable the package reads is in the registry (photonstream/config/environment.py), and every registered one is used.

Each check is a function the self-tests below run on a planted mistake, so that each can be seen to fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

from pydantic import BaseModel, Field

from photonstream.config import environment, reference

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "photonstream"
DOC = REPO / "docs" / "settings.md"

# Reads whose variable name is not a constant: (file, argument as written) -> why it need not be registered.
DYNAMIC_READS = {
    ("photonstream/api/cli.py", "passphrase_env"): "--passphrase-env names a variable of the operator's choosing",
    ("photonstream/buffer/credentials.py", "name"): "Credentials.from_env(name): default BUFFER_CREDENTIALS_ENV, "
    "else the buffer handler's credentials_env option",
    ("photonstream/job_secrets.py", "name"): "job_secret(name): the caller's variable, checked where it is called",
}  # fmt: skip


# --- (a) the document -----------------------------------------------------------------------------------------


def test_docs_settings_md_is_what_the_generator_makes() -> None:
    assert DOC.exists(), f"docs/settings.md is missing: {reference.REGENERATE}"
    assert DOC.read_text() == reference.render(), f"docs/settings.md is out of date: run {reference.REGENERATE}"


# --- (b) descriptions -----------------------------------------------------------------------------------------


def missing_descriptions(models: list[tuple[str, type[BaseModel]]]) -> list[str]:
    """'Model.field (key path)' of every field without a description."""
    return [
        f"{model.__name__}.{name} ({path + '.' if path else ''}{name})"
        for path, model in models
        for name, field in model.model_fields.items()
        if not (field.description or "").strip()
    ]


def test_every_settings_field_has_a_description() -> None:
    models = reference.all_models()
    names = {model.__name__ for _, model in models}
    assert {"ApiSettings", "BufferSettings", "WorkerKind", "WorkerOption"} <= names  # the walk finds nested models
    missing = missing_descriptions(models)
    assert not missing, f"settings fields without Field(description=...): {', '.join(missing)}"


def test_missing_description_is_reported_by_field_name() -> None:
    class Inner(BaseModel):
        bare: int = 1

    class Outer(BaseModel):
        described: int = Field(1, description="has one")
        inner: dict[str, Inner] = Field(default_factory=dict, description="nested")

    assert missing_descriptions(list(reference.walk("", Outer))) == ["Inner.bare (inner.<name>.bare)"]


# --- (c) the environment registry -----------------------------------------------------------------------------


def _environ(node: ast.expr) -> bool:
    """``os.environ``, or ``env``/``environ`` (a mapping standing for it, as reporting and job_secrets take)."""
    if isinstance(node, ast.Attribute):
        return node.attr == "environ" and isinstance(node.value, ast.Name) and node.value.id == "os"
    return isinstance(node, ast.Name) and node.id in ("environ", "env")


def reads(tree: ast.AST) -> list[ast.expr]:
    """The name argument of every environment read: os.environ[...], os.environ.get/setdefault, os.getenv,
    job_secret(...), and typer's envvar=."""
    found: list[ast.expr] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and _environ(node.value):
            found.append(node.slice)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
            environ_method = isinstance(func, ast.Attribute) and name in ("get", "setdefault") and _environ(func.value)
            if (environ_method or name in ("getenv", "job_secret")) and node.args:
                found.append(node.args[0])
            found += [keyword.value for keyword in node.keywords if keyword.arg == "envvar"]
    return found


def _bindings(tree: ast.AST) -> dict[str, list[ast.expr]]:
    """What each plain name may stand for: names imported from the registry, loop and comprehension targets (their
    iterable), simple assignments."""
    found: dict[str, list[ast.expr]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == environment.__name__:
            for alias in node.names:
                found.setdefault(alias.asname or alias.name, []).append(ast.Attribute(ast.Name("@"), alias.name))
        elif isinstance(node, ast.For | ast.comprehension) and isinstance(node.target, ast.Name):
            found.setdefault(node.target.id, []).append(node.iter)
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            found.setdefault(node.targets[0].id, []).append(node.value)
    return found


def resolve(node: ast.expr, bindings: dict[str, list[ast.expr]], depth: int = 0) -> set[str] | None:
    """The variable names ``node`` may be, or None when it is not made of string literals and registry names."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ("@", "environment"):
        value = getattr(environment, node.attr, None)
        if isinstance(value, str):
            return {value}
        if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
            return set(value)
        return None
    if isinstance(node, ast.Name) and node.id in bindings and depth < 5:
        found: set[str] = set()
        for bound in bindings[node.id]:
            names = resolve(bound, bindings, depth + 1)
            if names is None:
                return None
            found |= names
        return found
    return None


def unregistered_reads(root: Path, registered: set[str]) -> list[str]:
    """'file:line: NAME' for each read of a variable not in ``registered``, and 'file:line: expr' for each read
    whose name cannot be told (unless DYNAMIC_READS says why)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        bindings = _bindings(tree)
        where = path.relative_to(root.parent).as_posix()
        for argument in reads(tree):
            names = resolve(argument, bindings)
            if names is None:
                if (where, ast.unparse(argument)) not in DYNAMIC_READS:
                    problems.append(f"{where}:{argument.lineno}: {ast.unparse(argument)} (not a registry constant)")
                continue
            problems += [f"{where}:{argument.lineno}: {name}" for name in sorted(names - registered)]
    return problems


def test_every_environment_variable_read_is_registered() -> None:
    problems = unregistered_reads(PACKAGE, set(environment.BY_NAME))
    assert not problems, (
        "environment variables read but not in photonstream/config/environment.py (add them to VARIABLES and "
        f"import the name from there): {'; '.join(problems)}"
    )


def test_the_scan_finds_reads_of_unregistered_variables(tmp_path: Path) -> None:
    package = tmp_path / "photonstream"
    package.mkdir()
    (package / "planted.py").write_text(
        "import os\n"
        "import typer\n"
        "from photonstream.config.environment import DATA_ROOT_ENV, THREAD_VARIABLES\n"
        "LOCAL = 'PHOTONSTREAM_LOCAL_CONSTANT'\n"
        "a = os.environ.get('PHOTONSTREAM_NOT_REGISTERED')\n"
        "b = os.environ['PHOTONSTREAM_SUBSCRIPT']\n"
        "c = os.getenv(LOCAL)\n"
        "d = typer.Option(None, envvar='PHOTONSTREAM_OPTION')\n"
        "e = os.environ.get(DATA_ROOT_ENV)\n"
        "f = [os.environ.get(name) for name in THREAD_VARIABLES]\n"
        "def g(variable):\n"
        "    return os.environ.get(variable)\n"
    )
    problems = unregistered_reads(package, set(environment.BY_NAME))
    assert problems == [
        "photonstream/planted.py:5: PHOTONSTREAM_NOT_REGISTERED",
        "photonstream/planted.py:6: PHOTONSTREAM_SUBSCRIPT",
        "photonstream/planted.py:7: PHOTONSTREAM_LOCAL_CONSTANT",
        "photonstream/planted.py:8: PHOTONSTREAM_OPTION",
        "photonstream/planted.py:12: variable (not a registry constant)",
    ]


def test_every_registered_variable_is_used_and_its_setting_exists() -> None:
    used: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path.name != "environment.py" or path.parent.name != "config":
            tree = ast.parse(path.read_text())
            for names in _bindings(tree).values():
                for bound in names:
                    if isinstance(bound, ast.Attribute) and isinstance(bound.value, ast.Name) and bound.value.id == "@":
                        used |= resolve(bound, {}) or set()
    scripts = " ".join(path.read_text() for path in (REPO / "scripts").iterdir() if path.is_file())
    unused = [name for name in environment.BY_NAME if name not in used and name not in scripts]
    assert not unused, f"registered but neither imported from the registry nor used in scripts/: {unused}"
    assert len(environment.BY_NAME) == len(environment.VARIABLES), "a variable is registered twice"
    fields = {f"{model.__name__}.{name}" for _, model in reference.all_models() for name in model.model_fields}
    wrong = [v.name for v in environment.VARIABLES if v.setting is not None and v.setting not in fields]
    assert not wrong, f"registry entries naming a setting that does not exist: {wrong}"
