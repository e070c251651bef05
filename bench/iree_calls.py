"""Does IREE compile calls of a function it does not inline, and get them right? (issue 36)

irforge exports the decoder layer once, as a private function called once per layer
(stages/export/layer_functions.py). IREE inlines it, so the compile still grows with depth.
Keeping it out of line takes three steps through IREE's torch input path (a builtin-tensor
signature, `iree.abi.stub` so FuncConversion leaves it alone, `#util.inline.never` set on the
util.func after `--compile-to=input`); this script checks what IREE then does with such calls,
on a two-line function f(a, b) = (a + b, a * b) called twice (expected: 5 and 6 from 1 and 2),
against the same program inlined.

    .venv/bin/python bench/iree_calls.py
"""

from __future__ import annotations

import tempfile
from importlib.metadata import version
from pathlib import Path

import numpy as np

FLAGS = [
    "--iree-hal-target-device=local",
    "--iree-hal-local-target-device-backends=llvm-cpu",
    "--iree-llvmcpu-target-cpu=host",
]

PROGRAM = """
module {{
  util.func private @f(%a: {t}, %b: {t}) -> ({results}) attributes {{{policy}}} {{
    %0 = arith.addf %a, %b : {t}
    %1 = arith.mulf %a, %b : {t}
    util.return {returned}
  }}
  util.func public @main(%a: {t}, %b: {t}) -> ({results}) {{
    %0:{n} = util.call @f(%a, %b) : ({t}, {t}) -> ({results})
    %1:{n} = util.call @f(%0#0, {second}) : ({t}, {t}) -> ({results})
    util.return {final}
  }}
}}
"""


def program(dynamic: bool, two_results: bool, inline: bool) -> str:
    t = "tensor<?x4xf32>" if dynamic else "tensor<2x4xf32>"
    n = 2 if two_results else 1
    return PROGRAM.format(
        t=t,
        n=n,
        results=", ".join([t] * n),
        policy="" if inline else "inlining_policy = #util.inline.never",
        returned=f"%0, %1 : {t}, {t}" if two_results else f"%0 : {t}",
        second="%0#1" if two_results else "%b",
        final=f"%1#0, %1#1 : {t}, {t}" if two_results else f"%1#0 : {t}",
    ).replace("%0:1 =", "%0 =")


def run(source: str, tmp: Path) -> str:
    """'5 6' (or '5'): the first element of each result, or the compiler's first error line."""
    import iree.compiler as ic
    import iree.runtime as rt

    try:
        vmfb = ic.compile_str(source, extra_args=FLAGS)
    except ic.CompilerToolError as e:
        lines = [x for x in str(e).splitlines() if "error:" in x]
        return "compile fails: " + (lines[0].split("error:", 1)[1].strip() if lines else "?")
    config = rt.Config("local-task")
    ctx = rt.SystemContext(config=config)
    ctx.add_vm_module(rt.VmModule.copy_buffer(ctx.instance, vmfb))
    a, b = np.full((2, 4), 1, np.float32), np.full((2, 4), 2, np.float32)
    out = ctx.modules.module["main"](a, b)
    outs = out if isinstance(out, (list, tuple)) else [out]
    firsts = [np.asarray(o.to_host() if hasattr(o, "to_host") else o).flat[0] for o in outs]
    return " ".join(f"{x:g}" for x in firsts)


def main() -> None:
    print(f"IREE {version('iree-base-compiler')}, llvm-cpu; f(a, b) = (a + b, a * b) called twice")
    print("| results of f | shapes | inlined | not inlined |")
    print("| --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for two in (False, True):
            for dynamic in (False, True):
                cells = [run(program(dynamic, two, inline), Path(tmp)) for inline in (True, False)]
                want = "expected 5 6" if two else "expected 5"
                print(
                    f"| {'two' if two else 'one'} ({want}) | {'dynamic' if dynamic else 'static'} "
                    f"| {cells[0]} | {cells[1]} |"
                )


if __name__ == "__main__":
    main()
