"""Every public name is documented and typed: help() explains it, and type checkers see the
annotations (the package ships a py.typed marker)."""
import inspect
import tomllib
from pathlib import Path

import pytest

import gpu_negsample
from gpu_negsample import formats

ROOT = Path(__file__).resolve().parents[1]
PUBLIC = [getattr(gpu_negsample, name) for name in gpu_negsample.__all__ if name != "formats"]
PUBLIC += [getattr(formats, name) for name in formats.__all__]


def _members(obj):
    """obj itself, and for a class its constructor and its public methods and properties."""
    yield obj.__qualname__, obj
    if inspect.isclass(obj) and not issubclass(obj, BaseException):
        for name, member in vars(obj).items():
            if (not name.startswith("_") or name == "__init__") and (inspect.isfunction(member) or isinstance(member, (property, classmethod))):
                yield f"{obj.__qualname__}.{name}", member


def _function(member):
    if isinstance(member, property):
        return member.fget
    return member.__func__ if isinstance(member, classmethod) else member


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__qualname__)
def test_every_public_name_and_method_has_a_docstring(obj):
    undocumented = [name for name, member in _members(obj)  # the class docstring documents __init__
                    if not name.endswith("__init__") and not (_function(member).__doc__ or "").strip()]
    assert not undocumented, f"no docstring (help() shows nothing): {undocumented}"


@pytest.mark.parametrize("obj", PUBLIC, ids=lambda o: o.__qualname__)
def test_every_public_function_and_method_is_annotated(obj):
    missing = []
    for name, member in _members(obj):
        func = _function(member)
        if inspect.isclass(func) or not callable(func):
            continue
        sig = inspect.signature(func)
        params = [p for p in sig.parameters.values() if p.name not in ("self", "cls")
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        missing += [f"{name}({p.name})" for p in params if p.annotation is inspect.Parameter.empty]
        if sig.return_annotation is inspect.Signature.empty and func.__name__ != "__init__":
            missing.append(f"{name} -> ?")
    assert not missing, f"not annotated: {missing}"


def test_the_package_ships_a_py_typed_marker():
    assert (Path(gpu_negsample.__file__).parent / "py.typed").exists()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "py.typed" in package_data.get("gpu_negsample", [])
