"""Run the trainer where FiftyOne cannot be installed (the lent GPU machines: no registry,
and FiftyOne with its App is larger than what may travel there).

The trainer never touches a dataset when its data are folders or ``sample:`` scenes, but
``import fiftyone_unseg`` imports FiftyOne for the SDK. Importing this module first
serves placeholder modules for ``fiftyone`` (and its submodules) when the real package is
missing; any use of them raises. Usage: ``python -c "import without_fiftyone, runpy; ..."``
or ``python benchmarks/gpu/without_fiftyone.py MODULE_OR_SCRIPT.py ARGS...``.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import runpy
import sys
import types

STUBBED = ("fiftyone",)


class _Unavailable:
    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return _Unavailable(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is not available: FiftyOne is not installed here")


class _StubModule(types.ModuleType):
    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Unavailable(f"{self.__name__}.{attr}")


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in STUBBED:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def install(force: bool = False) -> None:
    """Serve stubs when FiftyOne is missing (or always, with ``force``)."""
    if force or importlib.util.find_spec("fiftyone") is None:
        sys.meta_path.insert(0, _StubFinder())


install(force="--force-stub" in sys.argv)
if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--force-stub"]
    sys.argv = args
    if args[0].endswith(".py"):
        runpy.run_path(args[0], run_name="__main__")
    else:
        runpy.run_module(args[0], run_name="__main__", alter_sys=True)
