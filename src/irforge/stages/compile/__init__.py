"""Compile an exported folder to a VMFB: the iree-compile driver (driver.py) and the folder
step that records each VMFB in the manifest (folder.py); the targets are facts/targets.py."""

from irforge.facts.targets import TARGETS, Target, get_target
from irforge.stages.compile.driver import CompileResult, run_iree_compile
from irforge.stages.compile.folder import compile_folder, register_compiled

__all__ = [
    "TARGETS",
    "CompileResult",
    "Target",
    "compile_folder",
    "get_target",
    "register_compiled",
    "run_iree_compile",
]
